"""Feature extractors with atrous convolution, one module per family."""
