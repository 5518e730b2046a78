//! `fuzz-xdp`: the packet-path fuzzer (`lb_tests::fuzz`), run by `cargo xtask fuzz-xdp`.
//!
//! Usage: `fuzz-xdp [--frames N] [--seed S]` (defaults: 10 000 000 frames through each
//! program, a seed from the clock, printed so a failure can be replayed).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut frames = 10_000_000u64;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = value.as_deref().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), parsed) {
            ("--frames", Some(n)) if n > 0 => frames = n,
            ("--seed", Some(s)) => seed = Some(s),
            _ => {
                eprintln!(
                    "fuzz-xdp: {arg} {}: expected --frames N (at least 1) or --seed S",
                    value.unwrap_or_default()
                );
                return ExitCode::from(2);
            }
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    println!("fuzz-xdp: seed {seed}");
    let report = lb_tests::fuzz::run(lb_tests::fuzz::Options { frames, seed });
    print!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
