"""moto 5.2.5 plus the pieces the aurora-migrator tests need; see tests/support/README.md."""
