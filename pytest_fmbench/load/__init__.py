"""Request records and the load patterns that produce them."""
