"""Task adapters: data, reference models and metric wiring; import a subpackage (`ctr`)."""
