"""Reports: pure functions of saved results (tables, plots, files). They never measure."""
