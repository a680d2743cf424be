"""`launch ui` and `launch report`: what a run's directory says, drawn as a page (see docs/ui.md).

Only these two commands import this package (and with it Starlette, uvicorn and Plotly); it reads
run directories and imports no torch.
"""
