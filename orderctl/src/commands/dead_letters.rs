//! `orderctl dead-letters list|replay`.

use std::io::Write;

use anyhow::Context as _;
use pipeline_runtime::deadletter::{self, DeadLetter};

use crate::Endpoints;

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetters {
    /// Print every dead letter: sequence, worker, subject, event id, deliveries, reason.
    List {
        /// Only the letters of this worker (e.g. `paymentworker`).
        #[arg(long)]
        worker: Option<String>,
    },
    /// Put dead letters back on their original subject and remove them from DEADLETTERS.
    Replay {
        /// Sequences of the letters to replay, as `list` prints them.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        sequences: Vec<u64>,
        /// Replay every letter (of `--worker` if given).
        #[arg(long)]
        all: bool,
        /// Only the letters of this worker.
        #[arg(long)]
        worker: Option<String>,
    },
}

impl DeadLetters {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let js = endpoints.jetstream().await?;
        match self {
            DeadLetters::List { worker } => {
                let letters = deadletter::list(&js, worker.as_deref()).await?;
                print_list(&letters, out)?;
            }
            DeadLetters::Replay {
                sequences,
                all,
                worker,
            } => {
                let letters = deadletter::list(&js, worker.as_deref()).await?;
                let chosen = choose(letters, sequences, *all)?;
                for letter in &chosen {
                    deadletter::replay(&js, letter)
                        .await
                        .with_context(|| format!("replaying dead letter {}", letter.sequence))?;
                    writeln!(
                        out,
                        "replayed {} ({}) to {}",
                        letter.sequence, letter.worker, letter.subject
                    )?;
                }
                writeln!(out, "{} dead letter(s) replayed", chosen.len())?;
            }
        }
        Ok(())
    }
}

/// The letters to replay; every named sequence must exist (checked before anything is replayed).
fn choose(
    letters: Vec<DeadLetter>,
    sequences: &[u64],
    all: bool,
) -> anyhow::Result<Vec<DeadLetter>> {
    if all {
        return Ok(letters);
    }
    let missing: Vec<String> = sequences
        .iter()
        .filter(|seq| !letters.iter().any(|letter| letter.sequence == **seq))
        .map(ToString::to_string)
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "no dead letter with sequence {} (see `orderctl dead-letters list`)",
        missing.join(", ")
    );
    Ok(letters
        .into_iter()
        .filter(|letter| sequences.contains(&letter.sequence))
        .collect())
}

fn print_list(letters: &[DeadLetter], out: &mut impl Write) -> std::io::Result<()> {
    if letters.is_empty() {
        return writeln!(out, "no dead letters");
    }
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|letter| {
            [
                letter.sequence.to_string(),
                letter.worker.clone(),
                letter.subject.clone(),
                letter.event_id.clone().unwrap_or_else(|| "-".to_owned()),
                letter.deliveries.clone(),
                letter.reason.clone(),
            ]
        })
        .collect();
    let header = [
        "SEQUENCE",
        "WORKER",
        "SUBJECT",
        "EVENT ID",
        "DELIVERIES",
        "REASON",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            // The last column (the reason) is not padded.
            .map(|(i, (cell, width))| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        writeln!(out, "{}", line.join("  "))?;
    }
    Ok(())
}
