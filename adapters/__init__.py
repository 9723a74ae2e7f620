"""Device transports: one module per transport behind the interface in :mod:`adapters.base`."""
