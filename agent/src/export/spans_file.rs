//! `--spans-out FILE`: spans as OTLP JSON, one `ExportTraceServiceRequest` per line, for when
//! there is no collector.

use std::{fs::File, io::Write, path::PathBuf};

use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{Resource, trace::SpanData};

pub(crate) struct SpansFile {
    file: std::io::BufWriter<File>,
    path: PathBuf,
    /// Set at the first write error (a full disk, say): later spans are counted, not written,
    /// so the file holds whole lines only up to the error.
    failed: bool,
}

impl SpansFile {
    /// Spans into `file` (at `path`, for messages), opened and emptied by the run.
    pub(crate) fn new(file: File, path: PathBuf) -> Self {
        Self {
            file: std::io::BufWriter::new(file),
            path,
            failed: false,
        }
    }

    /// Writes the spans of one process as one line; returns how many were not written. The
    /// first failure is reported once on stderr and the run goes on: metrics and the report
    /// do not depend on this file.
    pub(crate) fn write_or_count(&mut self, resource: &Resource, spans: Vec<SpanData>) -> u64 {
        let count = spans.len() as u64;
        if self.failed {
            return count;
        }
        match self.write(resource, spans) {
            Ok(()) => 0,
            Err(error) => {
                self.failed = true;
                eprintln!(
                    "flowtap: warning: cannot write spans to {}: {error}; further spans are not written to it (flowtap_spans_file_dropped_total counts them)",
                    self.path.display()
                );
                count
            }
        }
    }

    fn write(&mut self, resource: &Resource, spans: Vec<SpanData>) -> std::io::Result<()> {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        };
        serde_json::to_writer(&mut self.file, &request)?;
        self.file.write_all(b"\n")?;
        self.file.flush()
    }
}
