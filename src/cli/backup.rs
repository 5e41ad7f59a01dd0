//! `cairn export` and `cairn import` (the format is `crate::backup`'s).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::client::Client;
use super::{output, ExportArgs, Failure, ImportArgs, OutputFormat};
use crate::backup::{self, BackupError};

/// Reading and writing files in large pieces: an export is many small lines.
const IO_BUFFER_BYTES: usize = 1024 * 1024;

/// Where an export goes: standard output, or a file that is removed again
/// when the export fails (a partial backup must not lie around looking whole;
/// it would be refused anyway, for its missing trailer).
struct Output {
    path: Option<PathBuf>,
    writer: BufWriter<Box<dyn Write + Send>>,
}

impl Output {
    fn open(path: &Path) -> Result<Output, Failure> {
        if path == Path::new("-") {
            let stdout: Box<dyn Write + Send> = Box::new(std::io::stdout());
            return Ok(Output {
                path: None,
                writer: BufWriter::with_capacity(IO_BUFFER_BYTES, stdout),
            });
        }
        let file = File::create(path).map_err(|error| {
            Failure::Other(format!("cannot create {}: {error}", path.display()))
        })?;
        let file: Box<dyn Write + Send> = Box::new(file);
        Ok(Output {
            path: Some(path.to_path_buf()),
            writer: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
        })
    }

    fn name(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "standard output".to_string(),
        }
    }

    /// Flushes, and for a file makes it durable.
    fn finish(mut self) -> Result<(), Failure> {
        let name = self.name();
        let cannot =
            |error: std::io::Error| Failure::Other(format!("cannot write {name}: {error}"));
        self.writer.flush().map_err(cannot)?;
        if let Some(path) = &self.path {
            File::open(path)
                .and_then(|file| file.sync_all())
                .map_err(cannot)?;
        }
        Ok(())
    }

    fn discard(self) {
        if let Some(path) = self.path {
            drop(self.writer);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `cairn export`: from the daemon, or offline from a data directory.
pub(super) async fn export(client: &Client, args: ExportArgs) -> Result<(), Failure> {
    let mut output = Output::open(&args.file)?;
    let result = match &args.data_dir {
        None => client
            .download("/v1/export", &mut output.writer)
            .await
            .map(|download| match download.head_seq {
                Some(seq) => format!("up to seq {seq} ({} bytes)", download.bytes),
                None => format!("{} bytes", download.bytes),
            })
            .map_err(Failure::from),
        Some(dir) => export_offline(dir, &mut output.writer).await,
    };
    match result {
        Ok(what) => {
            let name = output.name();
            output.finish()?;
            eprintln!("exported {what} to {name}");
            Ok(())
        }
        Err(failure) => {
            output.discard();
            Err(failure)
        }
    }
}

async fn export_offline(dir: &Path, out: &mut dyn Write) -> Result<String, Failure> {
    crate::store::require_a_log(dir).map_err(|error| Failure::Other(error.to_string()))?;
    let store = crate::store::open_off_runtime(crate::store::StoreConfig::new(dir))
        .await
        .map_err(|error| Failure::Other(error.to_string()))?;
    let result = backup::write_export(store.clone(), out).await;
    store.close().await;
    let summary = result.map_err(|error| Failure::Other(error.to_string()))?;
    Ok(format!(
        "{} events, up to seq {} ({})",
        summary.events,
        summary.head.seq,
        hex::encode(summary.head.hash)
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImportReport {
    data_dir: String,
    events: u64,
    head_seq: u64,
    head_hash: String,
    seconds: f64,
    events_per_second: f64,
}

/// `cairn import`: a new data directory from an export, or nothing at all.
pub(super) async fn import(args: ImportArgs, format: OutputFormat) -> Result<(), Failure> {
    let (input, source): (Box<dyn BufRead + Send>, String) = if args.file == Path::new("-") {
        (
            Box::new(BufReader::with_capacity(IO_BUFFER_BYTES, std::io::stdin())),
            "standard input".into(),
        )
    } else {
        let file = File::open(&args.file).map_err(|error| {
            Failure::Other(format!("cannot read {}: {error}", args.file.display()))
        })?;
        (
            Box::new(BufReader::with_capacity(IO_BUFFER_BYTES, file)),
            args.file.display().to_string(),
        )
    };
    let summary = match backup::import_into_dir(&args.data_dir, input).await {
        Ok(summary) => summary,
        Err(error @ BackupError::Line { .. }) => {
            return Err(Failure::VerifyFailed(format!(
                "{source}: {error}\nnothing was imported; {} was not created",
                args.data_dir.display()
            )))
        }
        Err(error) => return Err(Failure::Other(error.to_string())),
    };
    let report = ImportReport {
        data_dir: args.data_dir.display().to_string(),
        events: summary.events,
        head_seq: summary.head.seq,
        head_hash: hex::encode(summary.head.hash),
        seconds: summary.elapsed.as_secs_f64(),
        events_per_second: summary.rate(),
    };
    if !output::print_structured(&report, format) {
        println!("imported {} events into {}", report.events, report.data_dir);
        println!("head seq {}, hash {}", report.head_seq, report.head_hash);
        println!(
            "{:.0} events/s ({:.3} s)",
            report.events_per_second, report.seconds
        );
    }
    Ok(())
}
