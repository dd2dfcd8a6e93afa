//! The deterministic simulator, run over many seeds (see `src/sim`).

use aurora_migrator::sim::{self, SimOptions};

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn smoke_one_seed_verbose() {
    let seed = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let report = sim::run(&SimOptions {
        seeds: 1,
        start_seed: seed,
        verbose: true,
        ..SimOptions::default()
    });
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
}

#[test]
fn many_seeds_with_faults() {
    let report = sim::run(&SimOptions {
        seeds: seeds_from_env(500),
        ..SimOptions::default()
    });
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
}
