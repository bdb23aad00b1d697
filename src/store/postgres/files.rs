//! `files`, `file_parts` and `request_templates`: uploads parsed as they
//! stream in, and bulk-loaded with binary COPY.

use super::PostgresStore;
use super::copy::{BinaryCopy, HEADER, TRAILER};
use crate::domain::file::{
    File, FileId, FileKind, IngestLimits, LineError, LineErrorCode, LineSplitter, RawLine,
};
use crate::domain::ids::TemplateId;
use crate::store::holes::send_part;
use crate::store::ingest::{Parse, Part};
use crate::store::{
    ByteStream, FileListQuery, FileStore, MAX_PAGE, NewFile, Order, Owner, Page, RequestStore,
    Result, StoreError,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::mpsc;

/// Bytes of templates sent to the database at a time, and the most bytes of
/// one stored part: big enough to amortise round trips, small enough to keep
/// memory flat.
const SEGMENT_BYTES: usize = 1 << 20;
/// Incoming chunks are cut to this size so that one huge chunk cannot make a
/// segment huge.
const SLICE_BYTES: usize = 256 << 10;

/// One unit of work for the database writer.
enum Segment {
    /// Template rows in binary COPY format, without header or trailer.
    Rows(Vec<u8>),
    /// One stored part of the original bytes.
    Part(Part),
}

/// The parser's running state for one upload: the shared part
/// (`store::ingest`) and the rows of the templates, in COPY's binary format.
struct Ingest<'l> {
    file_id: FileId,
    parse: Parse<'l>,
    copy: BinaryCopy,
    templates: u64,
}

impl<'l> Ingest<'l> {
    fn new(file_id: FileId, limits: &'l IngestLimits) -> Self {
        Self {
            file_id,
            parse: Parse::new(limits, SLICE_BYTES),
            copy: BinaryCopy::with_capacity(SEGMENT_BYTES + (64 << 10)),
            templates: 0,
        }
    }

    fn line(&mut self, raw: RawLine<'_>) {
        let Some((number, p)) = self.parse.line(raw) else {
            return;
        };
        let c = &mut self.copy;
        c.row(9);
        c.uuid(TemplateId::new().0);
        c.uuid(self.file_id.0);
        c.int8(number as i64);
        c.text(&p.custom_id);
        c.text(&p.url);
        c.text(p.body);
        c.text(&p.model);
        c.int8(p.body.len() as i64);
        c.int8(crate::domain::prefix::prefix_key(&p.model, p.body));
        self.templates += 1;
    }

    /// Takes the buffered rows, if `force` or if they fill a segment.
    fn take_rows(&mut self, force: bool) -> Option<Segment> {
        let full = self.copy.len() >= SEGMENT_BYTES;
        ((force || full) && self.copy.rows() > 0).then(|| {
            let next = BinaryCopy::with_capacity(SEGMENT_BYTES + (64 << 10));
            Segment::Rows(std::mem::replace(&mut self.copy, next).into_rows())
        })
    }

    /// Takes the settled part, if `force` or if it is full.
    fn take_part(&mut self, force: bool) -> Option<Segment> {
        let len = self.parse.part.len();
        ((force && len > 0) || len >= SEGMENT_BYTES)
            .then(|| Segment::Part(std::mem::take(&mut self.parse.part)))
    }
}

const TEMPLATE_COPY: &str = "COPY request_templates \
    (id, file_id, line_number, custom_id, path, body, model, body_byte_size, prefix_key) \
    FROM STDIN (FORMAT binary)";

/// Writes segments into the transaction as they come. A run of rows goes
/// through one COPY statement, ended only when a part comes: each new COPY
/// costs the server setting up its insert state again.
async fn write_segments(
    tx: &mut Transaction<'static, Postgres>,
    file_id: FileId,
    mut rx: mpsc::Receiver<Segment>,
) -> Result<()> {
    let mut seq: i32 = 0;
    let mut next = rx.recv().await;
    while let Some(seg) = next.take() {
        match seg {
            Segment::Rows(rows) => {
                let mut sink = tx.copy_in_raw(TEMPLATE_COPY).await?;
                let run: Result<Option<Segment>, sqlx::Error> = async {
                    sink.send(HEADER).await?;
                    sink.send(rows).await?;
                    loop {
                        match rx.recv().await {
                            Some(Segment::Rows(rows)) => {
                                sink.send(rows).await?;
                            }
                            other => {
                                sink.send(TRAILER).await?;
                                return Ok(other);
                            }
                        }
                    }
                }
                .await;
                match run {
                    Ok(other) => {
                        sink.finish().await?;
                        next = other;
                    }
                    Err(e) => {
                        let _ = sink.abort("upload failed").await;
                        return Err(e.into());
                    }
                }
            }
            Segment::Part(part) => {
                sqlx::query(
                    "INSERT INTO file_parts (file_id, seq, data, holes) VALUES ($1, $2, $3, $4)",
                )
                .bind(file_id)
                .bind(seq)
                .bind(part.data)
                .bind(part.holes)
                .execute(&mut **tx)
                .await?;
                seq += 1;
                next = rx.recv().await;
            }
        }
    }
    Ok(())
}

/// Finds lines whose custom_id an earlier line already used, deletes their
/// templates, and returns how many there were and the first `keep` of them.
async fn remove_duplicates(
    tx: &mut Transaction<'static, Postgres>,
    file_id: FileId,
    keep: usize,
) -> Result<(u64, Vec<LineError>)> {
    // A hash aggregate answers the common case (no duplicates) cheaply.
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM request_templates WHERE file_id = $1 \
         GROUP BY custom_id HAVING count(*) > 1)",
    )
    .bind(file_id)
    .fetch_one(&mut **tx)
    .await?;
    if !any {
        return Ok((0, Vec::new()));
    }
    let rows = sqlx::query(
        "WITH ranked AS ( \
             SELECT id, line_number, custom_id, \
                    row_number() OVER w AS rn, first_value(line_number) OVER w AS first_line \
             FROM request_templates WHERE file_id = $1 \
             WINDOW w AS (PARTITION BY custom_id ORDER BY line_number)), \
         gone AS ( \
             DELETE FROM request_templates t USING ranked r \
             WHERE t.id = r.id AND r.rn > 1 \
             RETURNING r.line_number, r.custom_id, r.first_line) \
         SELECT count(*) OVER () AS total, line_number, custom_id, first_line \
         FROM gone ORDER BY line_number LIMIT GREATEST($2, 1)",
    )
    .bind(file_id)
    // At least one row, even when no error is kept: it carries the total.
    .bind(keep as i64)
    .fetch_all(&mut **tx)
    .await?;
    let total = rows
        .first()
        .map(|r| r.try_get::<i64, _>("total"))
        .transpose()?
        .unwrap_or(0);
    let errors = rows
        .iter()
        .take(keep)
        .map(|r| {
            let line: i64 = r.try_get("line_number")?;
            let custom_id: String = r.try_get("custom_id")?;
            let first: i64 = r.try_get("first_line")?;
            Ok(LineError {
                line: Some(line as u64),
                code: LineErrorCode::DuplicateCustomId,
                message: format!("custom_id {custom_id:?} was already used on line {first}"),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((total as u64, errors))
}

/// Merges two line-ordered error lists, keeping the first `keep`.
fn merge_errors(a: Vec<LineError>, b: Vec<LineError>, keep: usize) -> Vec<LineError> {
    let mut all: Vec<LineError> = a.into_iter().chain(b).collect();
    all.sort_by_key(|e| e.line);
    all.truncate(keep);
    all
}

pub(super) const FILE_COLUMNS: &str = "id, owner, filename, purpose, kind, batch_id, bytes, \
     template_count, error_count, errors, urls, created_at, expires_at";

pub(super) fn file_from_row(row: &PgRow) -> Result<File> {
    let errors: sqlx::types::Json<Vec<LineError>> = row.try_get("errors")?;
    Ok(File {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        filename: row.try_get("filename")?,
        purpose: row.try_get("purpose")?,
        kind: row.try_get("kind")?,
        batch_id: row.try_get("batch_id")?,
        bytes: row.try_get("bytes")?,
        template_count: row.try_get("template_count")?,
        error_count: row.try_get("error_count")?,
        errors: errors.0,
        urls: row.try_get("urls")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl PostgresStore {
    /// Parses the upload into segments and hands them to `tx` as it goes.
    async fn ingest<S>(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        file_id: FileId,
        mut body: S,
    ) -> Result<Ingest<'_>>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let limits = &self.limits;
        let (seg_tx, seg_rx) = mpsc::channel::<Segment>(2);
        // Parsing and writing overlap: while the server digests one segment
        // the parser fills the next.
        let parse = async move {
            let mut st = Ingest::new(file_id, limits);
            let mut splitter = LineSplitter::new(limits.max_line_bytes);
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                st.parse.received(chunk.len())?;
                for slice in chunk.chunks(SLICE_BYTES) {
                    st.parse.keep(slice);
                    splitter.push(slice, |line| st.line(line));
                    st.parse.compact(&splitter);
                    for seg in [st.take_rows(false), st.take_part(false)]
                        .into_iter()
                        .flatten()
                    {
                        if seg_tx.send(seg).await.is_err() {
                            return Ok(st); // the writer failed; its error wins
                        }
                    }
                }
            }
            splitter.finish(|line| st.line(line));
            st.parse.compact(&splitter);
            debug_assert!(st.parse.all_settled(), "every byte is settled at the end");
            for seg in [st.take_rows(true), st.take_part(true)]
                .into_iter()
                .flatten()
            {
                if seg_tx.send(seg).await.is_err() {
                    break;
                }
            }
            Ok(st)
        };
        let write = write_segments(tx, file_id, seg_rx);
        let (parsed, written) = tokio::join!(parse, write);
        written?;
        parsed
    }
}

impl FileStore for PostgresStore {
    async fn create_file<S>(&self, new: NewFile, body: S) -> Result<File>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let file_id = FileId::new();
        // One of a few turns at the ingest pool (see the module doc of
        // `store`): the semaphore is never closed.
        let _turn = self
            .ingest_turns
            .acquire()
            .await
            .expect("the ingest semaphore is never closed");
        let mut tx = self.ingest.begin().await?;
        sqlx::query(
            "INSERT INTO files (id, owner, filename, purpose, kind, expires_at) \
             VALUES ($1, $2, $3, 'batch', 'input', $4)",
        )
        .bind(file_id)
        .bind(&new.owner)
        .bind(&new.filename)
        .bind(new.expires_at)
        .execute(&mut *tx)
        .await?;

        let st = self.ingest(&mut tx, file_id, body).await?;
        let keep = self.limits.max_kept_errors;
        let (dups, dup_errors) = if st.parse.check_duplicates {
            remove_duplicates(&mut tx, file_id, keep).await?
        } else {
            (0, Vec::new())
        };
        let mut error_count = st.parse.error_count + dups;
        let mut errors = merge_errors(st.parse.errors, dup_errors, keep);
        let templates = st.templates - dups;
        if templates == 0 && error_count == 0 {
            error_count = 1;
            errors.push(LineError {
                line: None,
                code: LineErrorCode::EmptyFile,
                message: "the file has no request lines".into(),
            });
        }
        let urls: Vec<String> = st.parse.urls.into_iter().collect();
        let row = sqlx::query(&format!(
            "UPDATE files SET bytes = $2, template_count = $3, error_count = $4, errors = $5, \
             urls = $6 WHERE id = $1 RETURNING {FILE_COLUMNS}"
        ))
        .bind(file_id)
        .bind(st.parse.bytes as i64)
        .bind(templates as i64)
        .bind(error_count as i64)
        .bind(sqlx::types::Json(&errors))
        .bind(&urls)
        .fetch_one(&mut *tx)
        .await?;
        let file = file_from_row(&row)?;
        tx.commit().await?;
        Ok(file)
    }

    async fn get_file(&self, owner: Owner<'_>, id: FileId) -> Result<Option<File>> {
        let row = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR owner = $2)"
        ))
        .bind(id)
        .bind(owner.param())
        .fetch_optional(&self.pools.replica)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    async fn list_files(&self, q: FileListQuery<'_>) -> Result<Page<File>> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let (cmp, dir) = match q.order {
            Order::Desc => ("<", "DESC"),
            Order::Asc => (">", "ASC"),
        };
        // The cursor is an id; its (created_at, id) bounds the page. An
        // unknown or foreign cursor yields an empty page.
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE deleted_at IS NULL AND ($1::text IS NULL OR owner = $1) \
               AND ($2::text IS NULL OR purpose = $2) \
               AND ($3::uuid IS NULL OR (created_at, id) {cmp} \
                    (SELECT created_at, id FROM files c WHERE c.id = $3 \
                       AND ($1::text IS NULL OR c.owner = $1))) \
             ORDER BY created_at {dir}, id {dir} LIMIT $4"
        ))
        .bind(q.owner.param())
        .bind(q.purpose)
        .bind(q.after)
        .bind(limit + 1)
        .fetch_all(&self.pools.replica)
        .await?;
        Page::from_rows(&rows, limit, file_from_row)
    }

    async fn delete_file(&self, owner: Owner<'_>, id: FileId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET deleted_at = now() \
             WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR owner = $2)",
        )
        .bind(id)
        .bind(owner.param())
        .execute(&self.pools.primary)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_file_expiry(
        &self,
        owner: Owner<'_>,
        id: FileId,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET expires_at = $3 \
             WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR owner = $2)",
        )
        .bind(id)
        .bind(owner.param())
        .bind(expires_at)
        .execute(&self.pools.primary)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn file_content(&self, owner: Owner<'_>, id: FileId) -> Result<ByteStream> {
        let file = self
            .get_file(owner, id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "file",
                id: id.to_string(),
            })?;
        match (file.kind, file.batch_id) {
            (FileKind::Input, _) => Ok(self.file_parts_stream(id)),
            (FileKind::Output, Some(batch)) => Ok(self.output_stream(batch)),
            (FileKind::Error, Some(batch)) => Ok(self.error_stream(batch)),
            (kind, None) => Err(StoreError::Invalid(format!(
                "{kind} file {id} has no batch"
            ))),
        }
    }
}

/// Sends the original bytes of input file `id` down `out`, one part at a
/// time, with the bodies cut out of each part read back from its templates
/// (`store::holes`). Stops quietly when the reader goes away.
async fn send_file_content(
    pool: &sqlx::PgPool,
    id: FileId,
    out: &mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    for seq in 0i32.. {
        let Some(row) =
            sqlx::query("SELECT data, holes FROM file_parts WHERE file_id = $1 AND seq = $2")
                .bind(id)
                .bind(seq)
                .fetch_optional(pool)
                .await?
        else {
            break;
        };
        let data: Vec<u8> = row.try_get("data")?;
        let holes: Option<Vec<u8>> = row.try_get("holes")?;
        let bodies = |first: i64, last: i64| {
            sqlx::query_as::<_, (i64, String)>(
                "SELECT line_number, body FROM request_templates \
                     WHERE file_id = $1 AND line_number BETWEEN $2 AND $3 ORDER BY line_number",
            )
            .bind(id)
            .bind(first)
            .bind(last)
            .fetch(pool)
            .map_err(StoreError::from)
        };
        if !send_part(id, data, holes.as_deref(), bodies, out).await? {
            break;
        }
    }
    Ok(())
}

impl PostgresStore {
    /// The original bytes of an input file, streamed: a task reads them
    /// ahead into a small channel, so memory stays flat.
    fn file_parts_stream(&self, id: FileId) -> ByteStream {
        let pool = self.pools.replica.clone();
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(4);
        tokio::spawn(async move {
            if let Err(e) = send_file_content(&pool, id, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }
}
