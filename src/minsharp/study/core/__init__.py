"""What every study kind shares: configuration, the run store, orchestration, provenance."""
