"""asv's install command in tests/test_asv.py: install one commit of b3 into an asv environment
by copying its `src/b3core` there, and make the torch, numpy, scipy and pandas already installed
beside the test runner importable through a .pth file (an asv environment must not download
several GB of torch). The environment's own site-packages comes first, so its b3core wins."""

import os
import shutil
import site
import sys
from pathlib import Path

checkout = Path(sys.argv[1])
target = Path(site.getsitepackages()[0])
shutil.rmtree(target / "b3core", ignore_errors=True)
shutil.copytree(checkout / "src" / "b3core", target / "b3core")
shared = os.environ["B3_ASV_SHARED_PATHS"].split(os.pathsep)
(target / "b3_shared_site.pth").write_text("\n".join(shared) + "\n")
