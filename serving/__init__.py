"""What a server serves: its configuration (`config`), the searcher assembled from a bundle and models
(`assemble`), the model pool shared by tenants (`pool`), and opening a tenant (`tenant`)."""
