//! `hvsock ring dump`: prints what a ring image holds, for people (a table
//! with a hex/ASCII preview) or for machines (`--json`).
//!
//! Decoding and validation are `vmbus_ring::inspect`'s; this module only
//! reads the file and formats the report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmbus_ring::inspect::{inspect, InspectedPacket, Inspection};

/// Arguments of `hvsock ring dump`.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// The ring image: a 4096-byte control page followed by the data area.
    file: PathBuf,

    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,

    /// Size of the data area in bytes (a multiple of 4096); default: the
    /// rest of the file after the control page.
    #[arg(long, value_name = "N")]
    data_size: Option<usize>,
}

/// Runs the command: exit code 0 for a sound image, 1 for a corrupt one.
pub fn run(args: &DumpArgs) -> anyhow::Result<ExitCode> {
    let image = std::fs::read(&args.file)
        .with_context(|| format!("cannot read the ring image {}", args.file.display()))?;
    let inspection = inspect(&image, args.data_size)
        .with_context(|| format!("{} is not a ring image", args.file.display()))?;
    tracing::debug!(
        packets = inspection.packets.len(),
        "inspected {}",
        args.file.display()
    );
    let report = if args.json {
        serde_json::to_string_pretty(&json_report(&inspection))? + "\n"
    } else {
        text_report(&inspection)
    };
    print!("{report}");
    Ok(match inspection.corruption {
        Some(_) => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    })
}

fn json_report(inspection: &Inspection) -> serde_json::Value {
    let mut value = serde_json::to_value(inspection).expect("an inspection is plain data");
    // Previews as hex and text, which people and tools read more easily than
    // arrays of numbers.
    if let Some(packets) = value["packets"].as_array_mut() {
        for (json, packet) in packets.iter_mut().zip(&inspection.packets) {
            json["preview"] = hex(&packet.preview).into();
            json["preview_ascii"] = ascii(&packet.preview).into();
        }
    }
    value["ok"] = inspection.corruption.is_none().into();
    if let Some(corruption) = &inspection.corruption {
        value["corruption"]["message"] = corruption.to_string().into();
    }
    value
}

fn text_report(inspection: &Inspection) -> String {
    let c = &inspection.control;
    let size = inspection.data_size;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ring: data area {size} bytes ({} pages + control page)",
        size / 4096
    );
    let _ = writeln!(out, "control page:");
    let _ = writeln!(
        out,
        "  write_index      {:#07x} ({})",
        c.write_index, c.write_index
    );
    let _ = writeln!(
        out,
        "  read_index       {:#07x} ({})",
        c.read_index, c.read_index
    );
    let _ = writeln!(out, "  interrupt_mask   {}", c.interrupt_mask);
    let _ = writeln!(
        out,
        "  pending_send_sz  {:#07x} ({})",
        c.pending_send_size, c.pending_send_size
    );
    let features = if c.feature_bits & 1 != 0 {
        " (pending_send_sz)"
    } else {
        ""
    };
    let _ = writeln!(out, "  feature_bits     {:#x}{features}", c.feature_bits);
    let _ = writeln!(
        out,
        "  used             {} bytes, free {}",
        inspection.used,
        size - inspection.used
    );
    let _ = writeln!(out, "packets: {}", inspection.packets.len());
    for (i, packet) in inspection.packets.iter().enumerate() {
        write_packet(&mut out, i, packet);
    }
    match &inspection.corruption {
        Some(corruption) => {
            let _ = writeln!(out, "CORRUPT: {corruption}");
        }
        None => {
            let _ = writeln!(out, "ok: every packet is valid");
        }
    }
    out
}

fn write_packet(out: &mut String, i: usize, p: &InspectedPacket) {
    let _ = writeln!(
        out,
        "  #{i} @{:#06x}  type {} offset8 {} len8 {} flags {:#x} trans_id {:#x}  {} bytes in ring",
        p.offset, p.packet_type, p.offset8, p.len8, p.flags, p.transaction_id, p.total_len
    );
    let what = if p.pipe.data_size == 0 { "  (FIN)" } else { "" };
    let _ = writeln!(
        out,
        "      pipe pkt_type {} data_size {}{what}",
        p.pipe.pkt_type, p.pipe.data_size
    );
    for (row, chunk) in p.preview.chunks(16).enumerate() {
        let _ = writeln!(
            out,
            "      {:04x}: {:<48} |{}|",
            row * 16,
            hex(chunk),
            ascii(chunk)
        );
    }
    if p.pipe.data_size as usize > p.preview.len() {
        let _ = writeln!(
            out,
            "      ... {} more bytes",
            p.pipe.data_size as usize - p.preview.len()
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn ascii(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}
