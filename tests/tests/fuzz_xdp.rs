//! A bounded run of the packet-path fuzzer (`lb_tests::fuzz`, `cargo xtask fuzz-xdp` for the
//! long one): 250 000 generated and mutated frames through each XDP program.

use lb_tests::fuzz::{Options, run};

#[test]
fn a_quarter_million_hostile_frames_through_each_program() {
    let report = run(Options {
        frames: 250_000,
        seed: 0x6c62_f022,
    });
    println!("{report}");
    assert!(report.passed(), "{report}");
}
