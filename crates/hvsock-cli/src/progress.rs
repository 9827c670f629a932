//! The progress display of `connect --progress` and `bridge --progress`:
//! bytes moved, rate, and ETA when the size is known, as an `indicatif` bar
//! on stderr — only when stderr is a terminal; otherwise nothing at all.
//!
//! Owns [`Meter`], a thread that samples the relay's [`Traffic`] counters
//! ten times a second; the relays themselves never touch the display.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::relay::Traffic;

/// A running progress display; dropping it draws the final state.
#[derive(Debug)]
pub struct Meter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Meter {
    /// Shows `traffic` under `label` if `wanted` and stderr is a terminal.
    /// `size`, the bytes expected in both directions together, gives a bar
    /// and an ETA.
    pub fn start(label: &str, traffic: Arc<Traffic>, size: Option<u64>, wanted: bool) -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        if !wanted || !std::io::stderr().is_terminal() {
            return Meter { stop, thread: None };
        }
        let bar = match size {
            Some(size) => ProgressBar::new(size).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix} {spinner} {bytes} {binary_bytes_per_sec} {msg}")
                    .expect("valid template"),
            ),
        }
        .with_prefix(label.to_string());
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || loop {
                let done = stop.load(Relaxed);
                let sent = traffic.sent.load(Relaxed);
                let received = traffic.received.load(Relaxed);
                bar.set_position(sent + received);
                bar.set_message(format!(
                    "(sent {}, received {}, {} open)",
                    HumanBytes(sent),
                    HumanBytes(received),
                    traffic.active.load(Relaxed)
                ));
                bar.tick();
                if done {
                    bar.finish();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            })
        };
        Meter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
