//! The pcapng file `lb capture` writes (little-endian, one section): a section header, an
//! interface description per ingress interface (Ethernet, nanosecond timestamps, its name), and
//! an enhanced packet block per packet whose comment is the balancer's outcome. Wireshark,
//! tshark and tcpdump read it; [`read`] reads it back for tests.
//!
//! Each block goes out whole, so a capture cut short (Ctrl-C, the daemon stopping) leaves a
//! file that ends at a block boundary.

use std::io::{self, Write};

/// Block types.
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;
/// The byte-order magic of a section header.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// Option codes.
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const EPB_QUEUE: u16 = 6;
const EPB_VERDICT: u16 = 7;
/// `epb_verdict`'s type for an XDP program's action (followed by it as 8 bytes).
const VERDICT_XDP: u8 = 2;
const SHB_USER_APPLICATION: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u16 = 1;

/// One packet to write.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The ingress interface (its index and name).
    pub ifindex: u32,
    pub interface: &'a str,
    /// Since the Unix epoch.
    pub time_ns: u64,
    /// The frame's length, of which `data` holds the first bytes.
    pub len: u32,
    pub data: &'a [u8],
    /// The receive queue (`epb_queue`), the XDP action (`epb_verdict`), and a comment.
    pub queue: u32,
    pub xdp_action: u32,
    pub comment: &'a str,
}

/// Writes a capture, interface descriptions as their interfaces first appear.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    /// Interface ids (the order of their descriptions) by ifindex.
    interfaces: Vec<u32>,
    snaplen: u32,
}

impl<W: Write> Writer<W> {
    /// Starts a file: its section header.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        // The section's length: not given.
        body.extend_from_slice(&(-1i64).to_le_bytes());
        let application = format!("lb capture {}", env!("CARGO_PKG_VERSION"));
        option(&mut body, SHB_USER_APPLICATION, application.as_bytes());
        end_options(&mut body);
        write_block(&mut out, SECTION_HEADER, &body)?;
        out.flush()?;
        Ok(Self {
            out,
            interfaces: Vec::new(),
            snaplen,
        })
    }

    /// Appends one packet.
    pub fn packet(&mut self, record: &Record<'_>) -> io::Result<()> {
        let Record {
            ifindex,
            interface,
            time_ns,
            len,
            data,
            queue,
            xdp_action,
            comment,
        } = *record;
        let id = self.interface_id(ifindex, interface)?;
        let mut body = Vec::with_capacity(64 + data.len() + comment.len());
        body.extend_from_slice(&id.to_le_bytes());
        #[expect(clippy::cast_possible_truncation, reason = "the two halves of a u64")]
        let (high, low) = ((time_ns >> 32) as u32, time_ns as u32);
        body.extend_from_slice(&high.to_le_bytes());
        body.extend_from_slice(&low.to_le_bytes());
        let captured = u32::try_from(data.len()).map_err(io::Error::other)?;
        body.extend_from_slice(&captured.to_le_bytes());
        body.extend_from_slice(&len.max(captured).to_le_bytes());
        body.extend_from_slice(data);
        pad(&mut body);
        option(&mut body, OPT_COMMENT, comment.as_bytes());
        option(&mut body, EPB_QUEUE, &queue.to_le_bytes());
        let mut verdict = vec![VERDICT_XDP];
        verdict.extend_from_slice(&u64::from(xdp_action).to_le_bytes());
        option(&mut body, EPB_VERDICT, &verdict);
        end_options(&mut body);
        write_block(&mut self.out, ENHANCED_PACKET, &body)?;
        self.out.flush()
    }

    /// The id of `ifindex`'s interface description, written now if it is new.
    fn interface_id(&mut self, ifindex: u32, name: &str) -> io::Result<u32> {
        if let Some(id) = self.interfaces.iter().position(|&known| known == ifindex) {
            return u32::try_from(id).map_err(io::Error::other);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&self.snaplen.to_le_bytes());
        let name = if name.is_empty() {
            format!("ifindex {ifindex}")
        } else {
            name.to_owned()
        };
        option(&mut body, IF_NAME, name.as_bytes());
        // Timestamps in units of 10^-9 s.
        option(&mut body, IF_TSRESOL, &[9]);
        end_options(&mut body);
        write_block(&mut self.out, INTERFACE_DESCRIPTION, &body)?;
        self.interfaces.push(ifindex);
        u32::try_from(self.interfaces.len() - 1).map_err(io::Error::other)
    }
}

fn pad(body: &mut Vec<u8>) {
    body.resize(body.len().next_multiple_of(4), 0);
}

fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    // An option holds at most 65535 bytes: a longer comment is cut (ours are short).
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    body.extend_from_slice(&code.to_le_bytes());
    #[expect(
        clippy::cast_possible_truncation,
        reason = "cut to u16::MAX just above"
    )]
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    pad(body);
}

fn end_options(body: &mut Vec<u8>) {
    body.extend_from_slice(&OPT_END.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
}

/// A block: type, total length, body (a multiple of 4 bytes), total length again.
fn write_block<W: Write>(out: &mut W, kind: u32, body: &[u8]) -> io::Result<()> {
    let total = u32::try_from(body.len() + 12).map_err(io::Error::other)?;
    let mut block = Vec::with_capacity(body.len() + 12);
    block.extend_from_slice(&kind.to_le_bytes());
    block.extend_from_slice(&total.to_le_bytes());
    block.extend_from_slice(body);
    block.extend_from_slice(&total.to_le_bytes());
    out.write_all(&block)
}

/// One packet of a file, as [`read`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPacket {
    /// The name of its interface description.
    pub interface: String,
    pub time_ns: u64,
    pub len: u32,
    pub data: Vec<u8>,
    pub comments: Vec<String>,
    /// `epb_queue`, and an `epb_verdict` of the XDP type.
    pub queue: Option<u32>,
    pub xdp_action: Option<u64>,
}

/// The packets of a little-endian pcapng file of one section with nanosecond interfaces (what
/// [`Writer`] writes); an error names what does not fit.
pub fn read(bytes: &[u8]) -> Result<Vec<ReadPacket>, String> {
    let u32_at = |at: usize, of: &[u8]| -> Result<u32, String> {
        of.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let mut interfaces = Vec::new();
    let mut packets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let kind = u32_at(at, bytes)?;
        let total = u32_at(at + 4, bytes)? as usize;
        if total < 12 || !total.is_multiple_of(4) {
            return Err(format!("block at byte {at}: length {total}"));
        }
        let block = bytes
            .get(at..at + total)
            .ok_or_else(|| format!("block at byte {at} runs past the end"))?;
        if u32_at(total - 4, block)? as usize != total {
            return Err(format!("block at byte {at}: its two lengths differ"));
        }
        let body = &block[8..total - 4];
        match kind {
            SECTION_HEADER if u32_at(0, body)? != BYTE_ORDER_MAGIC => {
                return Err("not a little-endian section".to_owned());
            }
            INTERFACE_DESCRIPTION => {
                let options = options(body.get(8..).unwrap_or_default())?;
                let name = options
                    .iter()
                    .find(|(code, _)| *code == IF_NAME)
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default();
                if !options.iter().any(|o| *o == (IF_TSRESOL, vec![9])) {
                    return Err(format!("interface {name:?} is not in nanoseconds"));
                }
                interfaces.push(name);
            }
            ENHANCED_PACKET => {
                let id = u32_at(0, body)? as usize;
                let time_ns = (u64::from(u32_at(4, body)?) << 32) | u64::from(u32_at(8, body)?);
                let captured = u32_at(12, body)? as usize;
                let len = u32_at(16, body)?;
                let data = body
                    .get(20..20 + captured)
                    .ok_or_else(|| format!("packet at byte {at} runs past its block"))?
                    .to_vec();
                let rest = body
                    .get(20 + captured.next_multiple_of(4)..)
                    .unwrap_or_default();
                let options = options(rest)?;
                let comments = options
                    .iter()
                    .filter(|(code, _)| *code == OPT_COMMENT)
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                    .collect();
                let queue = options
                    .iter()
                    .find(|(code, value)| *code == EPB_QUEUE && value.len() == 4)
                    .and_then(|(_, value)| Some(u32::from_le_bytes(value[..4].try_into().ok()?)));
                let xdp_action = options
                    .iter()
                    .find(|(code, value)| {
                        *code == EPB_VERDICT && value.len() == 9 && value[0] == VERDICT_XDP
                    })
                    .and_then(|(_, value)| Some(u64::from_le_bytes(value[1..9].try_into().ok()?)));
                let interface = interfaces
                    .get(id)
                    .cloned()
                    .ok_or_else(|| format!("packet at byte {at} names interface {id}"))?;
                packets.push(ReadPacket {
                    interface,
                    time_ns,
                    len,
                    data,
                    comments,
                    queue,
                    xdp_action,
                });
            }
            _ => {}
        }
        at += total;
    }
    Ok(packets)
}

/// The options in `bytes`, up to the end-of-options.
fn options(mut bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let mut found = Vec::new();
    while bytes.len() >= 4 {
        let code = u16::from_le_bytes([bytes[0], bytes[1]]);
        let len = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
        if code == OPT_END {
            break;
        }
        let value = bytes
            .get(4..4 + len)
            .ok_or_else(|| format!("option {code} runs past its block"))?;
        found.push((code, value.to_vec()));
        bytes = bytes.get(4 + len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_with_interfaces_and_comments() {
        let mut writer = Writer::new(Vec::new(), 2048).unwrap();
        let record = Record {
            ifindex: 3,
            interface: "eth0",
            time_ns: 1_700_000_000_123_456_789,
            len: 60,
            data: &[1, 2, 3, 4, 5],
            queue: 1,
            xdp_action: 3,
            comment: "a=1",
        };
        writer.packet(&record).unwrap();
        writer
            .packet(&Record {
                ifindex: 7,
                interface: "",
                time_ns: 5,
                len: 5,
                data: &[9; 8],
                comment: "action=drop reason=drop_no_backend",
                ..record
            })
            .unwrap();
        writer
            .packet(&Record {
                time_ns: 6,
                len: 1,
                data: &[7],
                comment: "",
                ..record
            })
            .unwrap();
        let bytes = writer.out;
        assert_eq!(bytes.len() % 4, 0);
        let packets = read(&bytes).unwrap();
        assert_eq!(packets.len(), 3);
        assert_eq!(packets[0].interface, "eth0");
        assert_eq!(packets[0].time_ns, 1_700_000_000_123_456_789);
        assert_eq!(
            (packets[0].len, &packets[0].data[..]),
            (60, &[1, 2, 3, 4, 5][..])
        );
        assert_eq!(packets[0].comments, ["a=1"]);
        assert_eq!(
            (packets[0].queue, packets[0].xdp_action),
            (Some(1), Some(3))
        );
        assert_eq!(packets[1].interface, "ifindex 7");
        assert_eq!(packets[1].comments, ["action=drop reason=drop_no_backend"]);
        assert_eq!(packets[2].interface, "eth0");
        assert!(
            read(&bytes[..bytes.len() - 4]).is_err(),
            "a cut block is seen"
        );
    }
}
