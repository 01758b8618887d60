"""Studies: the course's experiments and measurements, kept apart from the ideas they measure.

The rule that decides where code lives — *does it train, time or build a model in order to measure it?*

    concept packages   attention, moe, fp8, parallel, scaling: the ideas (a router, a quantiser, a schedule,
                       a simulator, a FLOP count, a fit). They import nothing above ``dslearn.model`` —
                       never ``dslearn.train``, ``dslearn.data``, ``dslearn.rl`` or this package — and hold
                       no experiment configs. A notebook can import a concept without paying for a trainer.
    dslearn.studies    the experiments: train models, run processes, time decode steps, count FLOPs of a
                       built model. A study may import anything (model, train, data, the parallel
                       runtime). Nothing in ``dslearn`` imports it; only the CLI, ``bench/``,
                       ``experiments/``, the notebooks and the tests do.

One module per chapter's experiments (import them by name; this package imports none of them, so the
FP8 study does not start the pipeline runtime, nor the decode benchmark the trainer):

    scaling.py    01  run_one / run_sweep: train run specs to their token budget, cached in JSON lines;
                      measured_flops_per_token: torch's FLOP counter on a built model, against M
    decode.py     02  measure_decode: decode speed and cache bytes of attention variants
    fp8.py        05  scaling error of FP8 quantisation with outliers; FP32 vs BF16 vs FP8 training
    parallel.py   06  measure_schedules, measure_expert_parallel: real multi-process pipeline runs and
                      their timing models (PIPELINE_CONFIG, MOE_CONFIG)

What a study *analyses* may still be a concept: the bubble and per-op costs of a measured timeline are
``dslearn.parallel.timeline``; a sweep's run specs and grids are ``dslearn.scaling.sweep``.
"""
