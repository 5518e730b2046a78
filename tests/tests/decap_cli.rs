//! `lb decap` as the README tells an operator to run it for backends in network namespaces:
//! a bpffs that outlives `ip netns exec` (mounted on the host), one pin directory per
//! namespace, `ip netns exec NS lb decap attach --iface eth0 --pin-dir DIR/NS`.
//!
//! The program stays attached after the command exits and decapsulates what is sent to the
//! VIPs it found on the namespace's `lo`; `lb decap status` shows them and the counters; two
//! namespaces keep apart; without `--pin-dir`, the command says what to do.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use lb::lab::{NetNs, daemon::lb_binary, veth};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// A bpffs mounted for the test, unmounted (and its pins gone) on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    /// Mounts one for test `name` (tests run in parallel, each with its own).
    fn mount(name: &str) -> Self {
        let path = PathBuf::from(format!("/run/lb-test-decap-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&path));
        Self(path)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `ip netns exec NS lb ARGS...`, as an operator types it.
fn lb_in(ns: &NetNs, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(lb_binary().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An IPv4-in-IPv4 packet from `src` to `outer_dst`, carrying a UDP datagram from `src` to
/// `VIP`:9999 with `payload`.
fn ipip_udp(src: Ipv4Addr, outer_dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    ipip_udp_to(src, outer_dst, VIP, payload)
}

/// As [`ipip_udp`], with the inner datagram addressed to `inner_dst`.
fn ipip_udp_to(src: Ipv4Addr, outer_dst: Ipv4Addr, inner_dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), inner_dst.octets(), 64)
        .udp(40_000, 9999)
        .write(&mut inner, payload)
        .unwrap();
    let mut outer = etherparse::Ipv4Header::new(
        u16::try_from(inner.len()).unwrap(),
        64,
        etherparse::IpNumber::IPV4,
        src.octets(),
        outer_dst.octets(),
    )
    .unwrap();
    outer.header_checksum = outer.calc_header_checksum();
    let mut packet = outer.to_bytes().to_vec();
    packet.extend_from_slice(&inner);
    packet
}

/// Sends a raw IP packet (header included) to `dst`, from the calling thread's namespace.
fn send_raw(packet: &[u8], dst: Ipv4Addr) {
    // SAFETY: plain socket creation; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let addr = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` and `addr` are valid for the lengths given and outlive the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_in>()).unwrap(),
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    assert!(sent >= 0, "sendto: {error}");
}

/// A backend namespace (`eth0` with `address`, the VIP on `lo`) and a sender's namespace on
/// the other end of its link.
fn backend(prefix: &str, address: Ipv4Addr) -> (NetNs, NetNs) {
    let ns = NetNs::new(prefix).unwrap();
    let sender = NetNs::new(prefix).unwrap();
    veth(&ns, "eth0", &sender, "s0").unwrap();
    ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    sender
        .ip(&["addr", "add", &format!("{SENDER}/24"), "dev", "s0"])
        .unwrap();
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
    ns.sysctl("net.ipv4.conf.eth0.rp_filter", "0").unwrap();
    (ns, sender)
}

/// Sends an IP-in-IP datagram to `address` from `sender` and waits for it on the VIP inside
/// `ns`; returns whether it arrived.
fn delivered(ns: &NetNs, sender: &NetNs, address: Ipv4Addr) -> bool {
    let socket = ns
        .run_here(|| UdpSocket::bind(SocketAddrV4::new(VIP, 9999)).unwrap())
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sender
        .run_here(|| send_raw(&ipip_udp(SENDER, address, b"through lb_decap"), address))
        .unwrap();
    let mut buffer = [0u8; 64];
    matches!(socket.recv(&mut buffer), Ok(n) if &buffer[..n] == b"through lb_decap")
}

#[test]
fn lb_decap_in_network_namespaces_as_the_readme_says() {
    lb_tests::require_root();
    let bpffs = Bpffs::mount("readme");
    let (one, sender_one) = backend("lbtdc", Ipv4Addr::new(198, 18, 0, 10));
    let (two, _sender_two) = backend("lbtdc", Ipv4Addr::new(198, 18, 0, 11));

    // Without a pin directory: /sys inside `ip netns exec` has no bpffs; the error says what
    // to do, and nothing is attached.
    let refused = lb_in(&one, &["decap", "attach", "--iface", "eth0"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("--pin-dir"),
        "the error names the option: {}",
        text(&refused)
    );
    assert!(!one.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    assert!(
        !delivered(&one, &sender_one, Ipv4Addr::new(198, 18, 0, 10)),
        "nothing decapsulates yet"
    );

    for (ns, dir) in [(&one, "one"), (&two, "two")] {
        let pin_dir = bpffs.0.join(dir);
        let attached = lb_in(
            ns,
            &[
                "decap",
                "attach",
                "--iface",
                "eth0",
                "--pin-dir",
                pin_dir.to_str().unwrap(),
            ],
        );
        assert!(attached.status.success(), "{}", text(&attached));
        assert!(
            text(&attached).contains(&VIP.to_string()),
            "{}",
            text(&attached)
        );
        assert!(ns.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    }
    // The command has exited; the program still works.
    assert!(delivered(&one, &sender_one, Ipv4Addr::new(198, 18, 0, 10)));

    let pin_one = bpffs.0.join("one");
    let status = lb_in(
        &one,
        &[
            "decap",
            "status",
            "--iface",
            "eth0",
            "--pin-dir",
            pin_one.to_str().unwrap(),
        ],
    );
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    assert!(shown.contains(&VIP.to_string()), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("decap_v4") && !l.ends_with(" 0")),
        "{shown}"
    );

    // Detached: the pins go, and the namespace receives IP-in-IP no more.
    for (ns, dir) in [(&one, "one"), (&two, "two")] {
        let pin_dir = bpffs.0.join(dir);
        let detached = lb_in(
            ns,
            &[
                "decap",
                "detach",
                "--iface",
                "eth0",
                "--pin-dir",
                pin_dir.to_str().unwrap(),
            ],
        );
        assert!(detached.status.success(), "{}", text(&detached));
        assert!(!Path::new(&pin_dir).join("eth0").exists());
    }
    assert!(!one.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
}

/// An earlier version of lb pinned the link itself at `PIN_DIR/IF` (a file where this one keeps
/// a directory), and its program accepted every inner destination: `status` says so, and
/// `attach` replaces it with one that accepts the VIPs only.
#[test]
fn an_earlier_versions_program_is_replaced_by_attach() {
    use aya::programs::links::FdLink;
    use lb::loader::{AttachMode, DECAP_PROGRAM, Decap, attach};

    lb_tests::require_root();
    let bpffs = Bpffs::mount("legacy");
    let (ns, sender) = backend("lbtdl", Ipv4Addr::new(198, 18, 0, 20));
    let pin_dir = bpffs.0.join("legacy");
    std::fs::create_dir_all(&pin_dir).unwrap();
    let legacy_pin = pin_dir.join("eth0");
    ns.run_here(|| {
        let mut decap = Decap::load(None).unwrap();
        decap.set_vips(&[VIP.into()]).unwrap();
        let (_, link_id) =
            attach(&mut decap.ebpf, DECAP_PROGRAM, "eth0", AttachMode::Driver).unwrap();
        let link = decap.program().unwrap().take_link(link_id).unwrap();
        FdLink::try_from(link).unwrap().pin(&legacy_pin).unwrap();
    })
    .unwrap();
    assert!(legacy_pin.is_file());
    let dir = pin_dir.to_str().unwrap();

    let status = lb_in(
        &ns,
        &["decap", "status", "--iface", "eth0", "--pin-dir", dir],
    );
    assert!(!status.status.success());
    assert!(
        text(&status).contains("earlier version"),
        "{}",
        text(&status)
    );

    let attached = lb_in(
        &ns,
        &["decap", "attach", "--iface", "eth0", "--pin-dir", dir],
    );
    assert!(attached.status.success(), "{}", text(&attached));
    assert!(
        text(&attached).contains("replaced an earlier version"),
        "{}",
        text(&attached)
    );
    assert!(legacy_pin.is_dir(), "the new layout: a directory of pins");
    assert!(delivered(&ns, &sender, Ipv4Addr::new(198, 18, 0, 20)));
    // The replacement accepts the VIPs only, which the earlier version did not.
    let stranger = Ipv4Addr::new(198, 18, 100, 77);
    sender
        .run_here(|| {
            let packet = ipip_udp_to(SENDER, Ipv4Addr::new(198, 18, 0, 20), stranger, b"x");
            send_raw(&packet, Ipv4Addr::new(198, 18, 0, 20));
        })
        .unwrap();
    let status = lb_in(
        &ns,
        &["decap", "status", "--iface", "eth0", "--pin-dir", dir],
    );
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("drop_not_vip") && !l.ends_with(" 0")),
        "{shown}"
    );

    let detached = lb_in(
        &ns,
        &["decap", "detach", "--iface", "eth0", "--pin-dir", dir],
    );
    assert!(detached.status.success(), "{}", text(&detached));
    assert!(!ns.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
}
