//! Kernel log lines for the rare drops an operator should hear about, written to aya-log's
//! ring buffer (`AYA_LOGS`) in aya-log's wire format; the agent reads them with `aya-log` and
//! bridges them into its own log. Called only from the drop branch of [`crate::lb::process`],
//! never for an ordinary packet. The agent sets aya-log's `AYA_LOG_LEVEL` at load from
//! `--log-level`; a disabled level costs one comparison with a constant the verifier prunes.
//!
//! Why not aya-log's `warn!` macros: they build each record in closures that LLVM keeps as BPF
//! subprograms, and any call costs at least 32 bytes of combined stack, which the XDP program
//! (about 500 of its 512 bytes) does not have. Here every record is a constant built at
//! compile time ([`record`]) and copied word by word into the ring buffer with the group id
//! patched in at a fixed offset: no calls, no stack.

use aya_log_common::{ArgumentKind, DisplayHint, Level, LogValueLength, RecordFieldKind};
use lb_common::Counter;

/// Every record is padded to this many 8-byte words, so one copy of constant length writes
/// any of them.
const WORDS: usize = 32;
/// The records' target (the agent logs kernel lines under its own target anyway).
const TARGET: &str = "lb_ebpf";
const MODULE: &str = module_path!();
const FILE: &str = file!();
/// Every message reads `service <id>: <text>`, so the id sits at the same offset in all.
const PREFIX: &str = "service ";
const SEPARATOR: &str = ": ";
/// Arguments of every record: the prefix, the id's display hint, the id, the text.
const NUM_ARGS: u32 = 4;
/// Bytes a field takes besides its value: kind (u8) and value length (u16).
const FIELD_HEADER: usize = 3;
/// Offset of the group id's bytes in every record: the size, the six header fields, the
/// prefix and display hint arguments, then the id field's own header.
const ID_AT: usize = size_of::<LogValueLength>()
    + 6 * FIELD_HEADER
    + TARGET.len()
    + 1 // level
    + MODULE.len()
    + FILE.len()
    + 4 // line
    + 4 // number of arguments
    + FIELD_HEADER
    + PREFIX.len()
    + FIELD_HEADER
    + 1 // display hint
    + FIELD_HEADER;

/// One log record about a group id, padded to [`WORDS`].
pub struct Record {
    level: Level,
    words: [u64; WORDS],
}

static NO_BACKEND: Record = record(
    Level::Debug,
    line!(),
    "dropped a new flow: no backend on this path (a traffic policy Local without a local \
     endpoint)",
);
static BACKEND_MISSING: Record = record(
    Level::Warn,
    line!(),
    "dropped a packet: its backend slot or backend entry is missing (maps changed behind \
     the agent, or an update in progress)",
);
static CONNTRACK_FULL: Record = record(
    Level::Warn,
    line!(),
    "dropped a new flow: the conntrack map refused its entry (full?)",
);
static REWRITE_FAILED: Record = record(
    Level::Warn,
    line!(),
    "dropped a packet: rewriting it failed",
);
static SNAT_PORTS_EXHAUSTED: Record = record(
    Level::Warn,
    line!(),
    "dropped a new flow: no free masquerading port",
);
static UNEXPOSED_PORT: Record = record(
    Level::Debug,
    line!(),
    "dropped a new flow to a ClusterIP port no Service exposes: its source gets no ICMP error",
);
static SOURCE_RANGE: Record = record(
    Level::Debug,
    line!(),
    "dropped a new flow: its source is outside loadBalancerSourceRanges",
);
static REJECT_SUPPRESSED: Record = record(
    Level::Debug,
    line!(),
    "dropped a new flow instead of rejecting it: its source or the node is over the reject \
     rate limit",
);
static UNALLOCATED_SERVICE_IP: Record = record(
    Level::Debug,
    line!(),
    "dropped a new flow to an address in the service CIDRs that no Service holds",
);
static REJECT_SOURCE: Record = record(
    Level::Debug,
    line!(),
    "dropped a new flow to a Service without endpoints: its source (zero, loopback, \
     multicast or broadcast) gets no ICMP error",
);

/// The record for a drop for `reason`: trouble (a backend missing mid-update, conntrack
/// refusing the flow, a failed rewrite, masquerading ports exhausted) at warn level; the
/// expected drops (no backend with a traffic policy Local, a reject or an unexposed
/// ClusterIP port from a source no ICMP error goes to, a source outside
/// `loadBalancerSourceRanges`, a reject over its rate limit, an unallocated address of the
/// service CIDRs) at debug level.
#[inline(always)]
fn record_for(reason: Counter) -> Option<&'static Record> {
    match reason {
        Counter::DropNoBackend => Some(&NO_BACKEND),
        Counter::DropBackendMissing => Some(&BACKEND_MISSING),
        Counter::DropConntrackFull => Some(&CONNTRACK_FULL),
        Counter::DropRewriteFailed => Some(&REWRITE_FAILED),
        Counter::DropSnatPortsExhausted => Some(&SNAT_PORTS_EXHAUSTED),
        Counter::DropUnexposedPort => Some(&UNEXPOSED_PORT),
        Counter::DropSourceRange => Some(&SOURCE_RANGE),
        Counter::DropRejectSuppressed => Some(&REJECT_SUPPRESSED),
        Counter::DropUnallocatedServiceIp => Some(&UNALLOCATED_SERVICE_IP),
        Counter::DropRejectSource => Some(&REJECT_SOURCE),
        _ => None,
    }
}

/// Logs the drop of a packet of service `group_id` for `reason`, if the level is enabled
/// and the ring buffer has room (a full ring buffer loses the line, never the packet's
/// verdict).
#[cfg(not(test))]
#[inline(always)]
pub fn dropped(reason: Counter, group_id: u32) {
    use aya_log_ebpf::macro_support::{level_enabled, AYA_LOGS};

    let Some(record) = record_for(reason) else {
        return;
    };
    if !level_enabled(record.level) {
        return;
    }
    let Some(mut entry) = AYA_LOGS.reserve::<[u64; WORDS]>(0) else {
        return;
    };
    let words = entry.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: the entry holds WORDS words; volatile keeps LLVM from turning the loop into
        // a memcpy call.
        unsafe { words.add(i).write_volatile(record.words[i]) };
        i += 1;
    }
    // SAFETY: ID_AT + 4 <= WORDS * 8 (checked when the records are built); a byte array has
    // no alignment requirement.
    unsafe {
        words
            .cast::<u8>()
            .add(ID_AT)
            .cast::<[u8; 4]>()
            .write_volatile(group_id.to_ne_bytes())
    };
    entry.submit(0);
}

/// Host tests: no ring buffer, no kernel log.
#[cfg(test)]
#[inline(always)]
pub fn dropped(_reason: Counter, _service_id: u32) {}

/// A record logging `service <id>: <text>` at `level`, in aya-log-common 0.2's wire format:
/// the record's size (u16), then fields of kind (u8), value length (u16) and value: target,
/// level, module, file, line, number of arguments, then the arguments `service ` (str), a
/// display hint, the id (u32, zero here; patched in when logged) and `: <text>` (str).
/// A record longer than [`WORDS`] words fails the build.
const fn record(level: Level, line: u32, text: &str) -> Record {
    let writer = Writer::new()
        .field(RecordFieldKind::Target as u8, TARGET.as_bytes())
        .field(RecordFieldKind::Level as u8, &[level as u8])
        .field(RecordFieldKind::Module as u8, MODULE.as_bytes())
        .field(RecordFieldKind::File as u8, FILE.as_bytes())
        .field(RecordFieldKind::Line as u8, &line.to_ne_bytes())
        .field(RecordFieldKind::NumArgs as u8, &NUM_ARGS.to_ne_bytes())
        .field(ArgumentKind::Str as u8, PREFIX.as_bytes())
        .field(
            ArgumentKind::DisplayHint as u8,
            &[DisplayHint::Default as u8],
        );
    assert!(
        writer.at + FIELD_HEADER == ID_AT,
        "the id is not where ID_AT says"
    );
    let writer = writer
        .field(ArgumentKind::U32 as u8, &[0; 4])
        .two_part_field(
            ArgumentKind::Str as u8,
            SEPARATOR.as_bytes(),
            text.as_bytes(),
        );
    Record {
        level,
        words: writer.finish(),
    }
}

/// Builds a record's bytes at compile time.
struct Writer {
    bytes: [u8; WORDS * 8],
    at: usize,
}

impl Writer {
    /// An empty record, with room for its size.
    const fn new() -> Self {
        Writer {
            bytes: [0; WORDS * 8],
            at: size_of::<LogValueLength>(),
        }
    }

    const fn field(self, kind: u8, value: &[u8]) -> Self {
        self.two_part_field(kind, value, &[])
    }

    /// A field whose value is `first` followed by `second`. Panics (at build time) if it does
    /// not fit.
    const fn two_part_field(mut self, kind: u8, first: &[u8], second: &[u8]) -> Self {
        let len = first.len() + second.len();
        assert!(
            self.at + FIELD_HEADER + len <= self.bytes.len(),
            "record too long"
        );
        let wire_len = (len as LogValueLength).to_ne_bytes();
        self.bytes[self.at] = kind;
        self.bytes[self.at + 1] = wire_len[0];
        self.bytes[self.at + 2] = wire_len[1];
        self.at += FIELD_HEADER;
        self.copy(first).copy(second)
    }

    const fn copy(mut self, from: &[u8]) -> Self {
        let mut i = 0;
        while i < from.len() {
            self.bytes[self.at + i] = from[i];
            i += 1;
        }
        self.at += from.len();
        self
    }

    /// The record with its size filled in, as native-endian words.
    const fn finish(mut self) -> [u64; WORDS] {
        let size = (self.at as LogValueLength).to_ne_bytes();
        self.bytes[0] = size[0];
        self.bytes[1] = size[1];
        let mut words = [0u64; WORDS];
        let mut i = 0;
        while i < WORDS {
            let mut word = [0u8; 8];
            let mut j = 0;
            while j < 8 {
                word[j] = self.bytes[i * 8 + j];
                j += 1;
            }
            words[i] = u64::from_ne_bytes(word);
            i += 1;
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record's bytes.
    fn bytes(record: &Record) -> Vec<u8> {
        record.words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    /// Reads the field at `at`: kind, value, offset after it.
    fn read(bytes: &[u8], at: usize) -> (u8, &[u8], usize) {
        let len = u16::from_ne_bytes([bytes[at + 1], bytes[at + 2]]) as usize;
        let value = &bytes[at + FIELD_HEADER..at + FIELD_HEADER + len];
        (bytes[at], value, at + FIELD_HEADER + len)
    }

    #[test]
    fn records_follow_aya_logs_wire_format_with_the_id_at_its_offset() {
        let mut patched = bytes(&BACKEND_MISSING);
        patched[ID_AT..ID_AT + 4].copy_from_slice(&7u32.to_ne_bytes());
        let size = u16::from_ne_bytes([patched[0], patched[1]]) as usize;
        let mut at = 2;
        let mut fields = Vec::new();
        while at < size {
            let (kind, value, next) = read(&patched, at);
            fields.push((kind, value.to_vec()));
            at = next;
        }
        assert_eq!(at, size, "fields end exactly at the record's size");
        let kinds: Vec<u8> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                RecordFieldKind::Target as u8,
                RecordFieldKind::Level as u8,
                RecordFieldKind::Module as u8,
                RecordFieldKind::File as u8,
                RecordFieldKind::Line as u8,
                RecordFieldKind::NumArgs as u8,
                ArgumentKind::Str as u8,
                ArgumentKind::DisplayHint as u8,
                ArgumentKind::U32 as u8,
                ArgumentKind::Str as u8,
            ]
        );
        assert_eq!(fields[1].1, [Level::Warn as u8]);
        assert_eq!(fields[5].1, NUM_ARGS.to_ne_bytes());
        assert_eq!(fields[8].1, 7u32.to_ne_bytes());
        let text = [fields[6].1.clone(), fields[9].1.clone()].concat();
        assert!(
            String::from_utf8(text)
                .unwrap()
                .starts_with("service : dropped a packet: its backend slot"),
            "the id goes between the two strings"
        );
    }

    #[test]
    fn every_drop_has_a_record_and_only_the_expected_ones_are_at_debug_level() {
        for reason in Counter::ALL {
            let record = record_for(reason);
            let is_drop = reason.name().starts_with("drop_");
            assert_eq!(record.is_some(), is_drop, "{reason:?}");
            if let Some(record) = record {
                let debug = [
                    Counter::DropNoBackend,
                    Counter::DropUnexposedPort,
                    Counter::DropSourceRange,
                    Counter::DropRejectSuppressed,
                    Counter::DropUnallocatedServiceIp,
                    Counter::DropRejectSource,
                ];
                let expected = if debug.contains(&reason) {
                    Level::Debug
                } else {
                    Level::Warn
                };
                assert_eq!(record.level, expected, "{reason:?}");
            }
        }
    }
}
