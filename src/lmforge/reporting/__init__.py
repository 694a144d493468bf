"""Reports of runs, multiruns and sweeps: tables, plots and one number formatter."""
