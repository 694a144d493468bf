"""What every run needs around the model: callbacks, precision, checkpoint I/O, the run
directory, loggers and the reproducibility record."""
