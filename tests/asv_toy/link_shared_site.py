"""Run by asv inside each toy environment: a .pth file makes torch and b3core, already installed
beside the test runner, importable there, so the environment downloads no torch. toyproj itself
is still installed per commit, into the environment's own site-packages, which comes first."""

import os
import site

paths = os.environ["B3_TOY_SHARED_PATHS"].split(os.pathsep)
with open(os.path.join(site.getsitepackages()[0], "b3_toy_shared.pth"), "w") as pth:
    pth.write("\n".join(paths) + "\n")
