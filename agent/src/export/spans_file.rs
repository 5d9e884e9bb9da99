//! `--spans-out FILE`: spans as OTLP JSON, one `ExportTraceServiceRequest` per line, for when
//! there is no collector.

use std::{fs::File, io::Write};

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
}

impl SpansFile {
    /// Spans into `file`, opened and emptied by the run.
    pub(crate) fn new(file: File) -> Self {
        Self {
            file: std::io::BufWriter::new(file),
        }
    }

    /// Writes the spans of one process as one line.
    pub(crate) fn write(
        &mut self,
        resource: &Resource,
        spans: Vec<SpanData>,
    ) -> std::io::Result<()> {
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
