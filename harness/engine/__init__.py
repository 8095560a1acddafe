"""What runs inside one DDP job: the cell callable and the training loop it drives.

`cell` (run_cell: data, model, training by phases, evaluation, rows), `train` (the loop, optimizer,
scheduler, feature extraction), `schedule` (phases and learning-rate plans), `checkpoint` (resume and
the stop signal), `dist` (process group helpers), `gpu` (NVML sampling, peak memory) and `rows`
(every row the store receives). The engine knows neither the grid nor who launched it.
"""
