"""What both evaluations share (`python -m trainer eval`, with and without `--protocol`):

    runs.py      a run or adapter directory -> the exact base + adapter it was trained on
    predict.py   eval-mode forwards of both models on one batch
    report.py    metrics.json, value / change formatting, report writing
    pictures.py  the PNGs (the only matplotlib user)

The metrics and their aggregation stay with each evaluation: trainer/evaluate.py (the window report)
and trainer/protocols.py (the published ETH3D protocols).
"""
