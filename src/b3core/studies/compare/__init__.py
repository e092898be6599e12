"""`b3 compare`: base against head, interleaved in one job, judged with statistics.

- `settings`: how a comparison runs and is judged (one declaration, with the command line's);
- `sides`: what each side runs (a git revision in its own worktree, an interpreter);
- `worker`: the process that imports one side's code and times blocks on request;
- `workers`: the parent's end of that protocol;
- `interleave`: epochs of fresh workers, balanced pairs of blocks, the looks;
- `verdict`: the statistics, free of torch;
- `records`: what a comparison leaves behind; `session`: a whole comparison;
- `saved`: two saved pytest-benchmark runs judged with the same statistics;
- `slowed_project`: a throwaway user project whose HEAD does more device work, for checking
  that compare sees a slowdown (and only a real one).
"""
