//! `files`, `file_parts` and `request_templates`: uploads parsed as they
//! stream in and written a segment at a time, each segment its own short
//! write (so an upload never holds the one writer for long); the file's
//! row, written last, makes them visible.
//!
//! A template's body is stored once: the stored parts of the original
//! bytes have the bodies cut out, with a list of holes saying where each
//! goes back on download (as the PostgreSQL backend does).

use super::SqliteStore;
use super::types::{micros, time, time_opt};
use crate::domain::file::{
    File, FileId, FileKind, IngestLimits, LineError, LineErrorCode, LineSplitter, RawLine,
    parse_line,
};
use crate::domain::ids::TemplateId;
use crate::store::fingerprints::{Fingerprints, Seen};
use crate::store::holes::{decode_holes, missing_body, push_hole};
use crate::store::{
    ByteStream, FileListQuery, FileStore, MAX_PAGE, NewFile, Order, Owner, Page, RequestStore,
    Result, StoreError,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt, stream};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use tokio::sync::mpsc;

/// Bytes of templates, or of the original file, written at a time.
const SEGMENT_BYTES: usize = 1 << 20;
/// Incoming chunks are cut to this size, so one huge chunk cannot make a
/// segment huge.
const SLICE_BYTES: usize = 256 << 10;
/// Templates per INSERT statement (nine parameters each, well under
/// SQLite's limit of 32766).
const ROWS_PER_INSERT: usize = 500;

/// A piece of the original file with the bodies of its templates cut out.
#[derive(Default)]
struct Part {
    /// The bytes, bodies removed.
    data: Vec<u8>,
    /// For each body removed, in order: see `store::holes`.
    holes: Vec<u8>,
}

impl Part {
    fn len(&self) -> usize {
        self.data.len() + self.holes.len()
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty() && self.holes.is_empty()
    }
}

/// One valid line, owned until its segment is written.
struct Template {
    line: i64,
    custom_id: String,
    path: String,
    body: String,
    model: String,
    prefix_key: i64,
}

/// The parser's running state for one upload.
struct Ingest<'l> {
    limits: &'l IngestLimits,
    templates: Vec<Template>,
    template_bytes: usize,
    /// Original bytes not yet moved into `part`, from stream offset
    /// `raw_base`; those before `raw_pos` are settled (moved or cut out).
    raw: Vec<u8>,
    raw_base: u64,
    raw_pos: usize,
    /// Original bytes not yet written, bodies cut out.
    part: Part,
    seq: i64,
    bytes: u64,
    count: u64,
    errors: Vec<LineError>,
    error_count: u64,
    urls: BTreeSet<String>,
    /// Fingerprints of the custom_ids seen; a repeat is only a suspicion,
    /// confirmed by the database.
    fingerprints: Fingerprints,
    hasher: RandomState,
    check_duplicates: bool,
}

impl<'l> Ingest<'l> {
    fn new(limits: &'l IngestLimits) -> Self {
        Self {
            limits,
            templates: Vec::new(),
            template_bytes: 0,
            raw: Vec::with_capacity(SLICE_BYTES),
            raw_base: 0,
            raw_pos: 0,
            part: Part::default(),
            seq: 0,
            bytes: 0,
            count: 0,
            errors: Vec::new(),
            error_count: 0,
            urls: BTreeSet::new(),
            fingerprints: Fingerprints::new(limits.max_fingerprints),
            hasher: RandomState::new(),
            check_duplicates: false,
        }
    }

    fn error(&mut self, e: LineError) {
        self.error_count += 1;
        if self.errors.len() < self.limits.max_kept_errors {
            self.errors.push(e);
        }
    }

    /// Moves the original bytes before stream offset `to` into the part.
    fn settle(&mut self, to: u64) {
        let end = (to - self.raw_base) as usize;
        if end > self.raw_pos {
            self.part
                .data
                .extend_from_slice(&self.raw[self.raw_pos..end]);
            self.raw_pos = end;
        }
    }

    /// Settles what the splitter will not look at again and drops it from `raw`.
    fn compact(&mut self, splitter: &LineSplitter) {
        self.settle(splitter.pending_start());
        self.raw.drain(..self.raw_pos);
        self.raw_base += self.raw_pos as u64;
        self.raw_pos = 0;
    }

    fn line(&mut self, raw: RawLine<'_>) {
        let (number, offset, bytes) = match raw {
            RawLine::Line {
                number,
                offset,
                bytes,
            } => (number, offset, bytes),
            RawLine::TooLong { number, len } => {
                let max = self.limits.max_line_bytes;
                return self.error(LineError {
                    line: Some(number),
                    code: LineErrorCode::LineTooLong,
                    message: format!("line is {len} bytes long; the limit is {max}"),
                });
            }
        };
        match parse_line(number, bytes, &self.limits.endpoints) {
            Err(e) => self.error(e),
            Ok(p) => {
                if !self.urls.contains(p.url.as_ref()) {
                    self.urls.insert(p.url.to_string());
                }
                if self
                    .fingerprints
                    .insert(self.hasher.hash_one(&*p.custom_id))
                    == Seen::New
                {
                    // The first use of a custom_id keeps its template (the
                    // duplicate check deletes later ones), so only its body
                    // is cut out of the stored bytes. The body borrows from
                    // the line, so its place in the stream follows.
                    let start =
                        offset + (p.body.as_ptr() as usize - bytes.as_ptr() as usize) as u64;
                    self.settle(start);
                    push_hole(&mut self.part.holes, self.part.data.len(), number);
                    self.raw_pos = (start - self.raw_base) as usize + p.body.len();
                } else {
                    self.check_duplicates = true;
                }
                self.template_bytes += p.body.len() + p.custom_id.len() + 64;
                self.templates.push(Template {
                    line: number as i64,
                    custom_id: p.custom_id.into_owned(),
                    path: p.url.into_owned(),
                    body: p.body.to_owned(),
                    prefix_key: crate::domain::prefix::prefix_key(&p.model, p.body),
                    model: p.model.into_owned(),
                });
                self.count += 1;
            }
        }
    }

    fn full(&self) -> bool {
        self.template_bytes >= SEGMENT_BYTES || self.part.len() >= SEGMENT_BYTES
    }
}

impl SqliteStore {
    /// Writes the buffered templates and original bytes in one transaction.
    async fn write_segment(&self, file_id: FileId, st: &mut Ingest<'_>) -> Result<()> {
        if st.templates.is_empty() && st.part.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for rows in st.templates.chunks(ROWS_PER_INSERT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO request_templates (id, file_id, line_number, custom_id, path, body, \
                 model, body_byte_size, prefix_key) ",
            );
            q.push_values(rows, |mut b, t| {
                b.push_bind(TemplateId::new())
                    .push_bind(file_id)
                    .push_bind(t.line)
                    .push_bind(t.custom_id.as_str())
                    .push_bind(t.path.as_str())
                    .push_bind(t.body.as_str())
                    .push_bind(t.model.as_str())
                    .push_bind(t.body.len() as i64)
                    .push_bind(t.prefix_key);
            });
            q.build().execute(&mut *tx).await?;
        }
        if !st.part.is_empty() {
            sqlx::query("INSERT INTO file_parts (file_id, seq, data, holes) VALUES (?, ?, ?, ?)")
                .bind(file_id)
                .bind(st.seq)
                .bind(st.part.data.as_slice())
                .bind(st.part.holes.as_slice())
                .execute(&mut *tx)
                .await?;
            st.seq += 1;
        }
        tx.commit().await?;
        st.templates.clear();
        st.template_bytes = 0;
        st.part = Part::default();
        Ok(())
    }

    /// Parses and writes the upload; returns the parser's findings.
    async fn ingest<S>(&self, file_id: FileId, mut body: S) -> Result<Ingest<'_>>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let limits = &self.limits;
        let mut st = Ingest::new(limits);
        let mut splitter = LineSplitter::new(limits.max_line_bytes);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            st.bytes += chunk.len() as u64;
            if st.bytes > limits.max_file_bytes {
                return Err(StoreError::TooLarge {
                    limit: limits.max_file_bytes,
                });
            }
            for slice in chunk.chunks(SLICE_BYTES) {
                st.raw.extend_from_slice(slice);
                splitter.push(slice, |line| st.line(line));
                st.compact(&splitter);
                if st.full() {
                    self.write_segment(file_id, &mut st).await?;
                }
            }
        }
        splitter.finish(|line| st.line(line));
        st.compact(&splitter);
        debug_assert!(st.raw.is_empty(), "every byte is settled at the end");
        self.write_segment(file_id, &mut st).await?;
        Ok(st)
    }

    /// Forgets what a failed upload wrote.
    async fn drop_upload(&self, file_id: FileId) {
        let cleanup = async {
            let mut tx = self.write().await?;
            sqlx::query("DELETE FROM request_templates WHERE file_id = ?")
                .bind(file_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM file_parts WHERE file_id = ?")
                .bind(file_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        if let Err(e) = cleanup.await {
            tracing::warn!(error = %e, file = %file_id, "could not remove a failed upload's rows");
        }
    }
}

/// Finds lines whose custom_id an earlier line already used, deletes their
/// templates, and returns how many there were and the first `keep` of them.
async fn remove_duplicates(
    tx: &mut SqliteConnection,
    file_id: FileId,
    keep: usize,
) -> Result<(u64, Vec<LineError>)> {
    const RANKED: &str = "WITH ranked AS ( \
         SELECT id, line_number, custom_id, \
                row_number() OVER w AS rn, first_value(line_number) OVER w AS first_line \
         FROM request_templates WHERE file_id = ?1 \
         WINDOW w AS (PARTITION BY custom_id ORDER BY line_number))";
    let rows = sqlx::query(&format!(
        "{RANKED} SELECT line_number, custom_id, first_line FROM ranked WHERE rn > 1 \
         ORDER BY line_number LIMIT ?2"
    ))
    .bind(file_id)
    .bind(keep as i64)
    .fetch_all(&mut *tx)
    .await?;
    let gone = sqlx::query(&format!(
        "{RANKED} DELETE FROM request_templates WHERE id IN (SELECT id FROM ranked WHERE rn > 1)"
    ))
    .bind(file_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let errors = rows
        .iter()
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
        .collect::<Result<Vec<_>>>()?;
    Ok((gone, errors))
}

pub(super) const FILE_COLUMNS: &str = "id, owner, filename, purpose, kind, batch_id, bytes, \
     template_count, error_count, errors, urls, created_at, expires_at";

fn json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("a stored JSON value is malformed: {e}")))
}

pub(super) fn file_from_row(row: &SqliteRow) -> Result<File> {
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
        errors: json(row.try_get("errors")?)?,
        urls: json(row.try_get("urls")?)?,
        created_at: time(row.try_get("created_at")?),
        expires_at: time_opt(row.try_get("expires_at")?),
    })
}

impl FileStore for SqliteStore {
    async fn create_file<S>(&self, new: NewFile, body: S) -> Result<File>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let file_id = FileId::new();
        let st = match self.ingest(file_id, body).await {
            Ok(st) => st,
            Err(e) => {
                self.drop_upload(file_id).await;
                return Err(e);
            }
        };
        let keep = self.limits.max_kept_errors;
        let made = async {
            let mut tx = self.write().await?;
            let (dups, dup_errors) = if st.check_duplicates {
                remove_duplicates(&mut tx, file_id, keep).await?
            } else {
                (0, Vec::new())
            };
            let mut error_count = st.error_count + dups;
            let mut errors: Vec<LineError> = st.errors.into_iter().chain(dup_errors).collect();
            errors.sort_by_key(|e| e.line);
            errors.truncate(keep);
            let templates = st.count - dups;
            if templates == 0 && error_count == 0 {
                error_count = 1;
                errors.push(LineError {
                    line: None,
                    code: LineErrorCode::EmptyFile,
                    message: "the file has no request lines".into(),
                });
            }
            let urls: Vec<String> = st.urls.into_iter().collect();
            let row = sqlx::query(&format!(
                "INSERT INTO files (id, owner, filename, purpose, kind, bytes, template_count, \
                 error_count, errors, urls, created_at, expires_at) \
                 VALUES (?, ?, ?, 'batch', 'input', ?, ?, ?, ?, ?, ?, ?) RETURNING {FILE_COLUMNS}"
            ))
            .bind(file_id)
            .bind(&new.owner)
            .bind(&new.filename)
            .bind(st.bytes as i64)
            .bind(templates as i64)
            .bind(error_count as i64)
            .bind(serde_json::to_string(&errors).expect("line errors serialize"))
            .bind(serde_json::to_string(&urls).expect("urls serialize"))
            .bind(micros(Utc::now()))
            .bind(new.expires_at.map(micros))
            .fetch_one(&mut *tx)
            .await?;
            let file = file_from_row(&row)?;
            tx.commit().await?;
            Ok::<_, StoreError>(file)
        }
        .await;
        if made.is_err() {
            self.drop_upload(file_id).await;
        }
        made
    }

    async fn get_file(&self, owner: Owner<'_>, id: FileId) -> Result<Option<File>> {
        let row = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR owner = ?2)"
        ))
        .bind(id)
        .bind(owner.param())
        .fetch_optional(&self.reader)
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
             WHERE deleted_at IS NULL AND (?1 IS NULL OR owner = ?1) \
               AND (?2 IS NULL OR purpose = ?2) \
               AND (?3 IS NULL OR (created_at, id) {cmp} \
                    (SELECT created_at, id FROM files c WHERE c.id = ?3 \
                       AND (?1 IS NULL OR c.owner = ?1))) \
             ORDER BY created_at {dir}, id {dir} LIMIT ?4"
        ))
        .bind(q.owner.param())
        .bind(q.purpose)
        .bind(q.after)
        .bind(limit + 1)
        .fetch_all(&self.reader)
        .await?;
        Page::from_rows(&rows, limit, file_from_row)
    }

    async fn delete_file(&self, owner: Owner<'_>, id: FileId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET deleted_at = ?3 \
             WHERE id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR owner = ?2)",
        )
        .bind(id)
        .bind(owner.param())
        .bind(micros(Utc::now()))
        .execute(&self.writer)
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

    async fn set_file_expiry(
        &self,
        owner: Owner<'_>,
        id: FileId,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET expires_at = ?3 \
             WHERE id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR owner = ?2)",
        )
        .bind(id)
        .bind(owner.param())
        .bind(expires_at.map(micros))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Bytes handed to a download at a time.
const DOWNLOAD_CHUNK: usize = 256 << 10;

/// Sends the original bytes of input file `id` down `out`, one part at a
/// time, with the bodies cut out of each part read back from its templates.
/// Stops quietly when the reader goes away.
async fn send_file_content(
    pool: &sqlx::SqlitePool,
    id: FileId,
    out: &mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    for seq in 0i64.. {
        let Some(row) =
            sqlx::query("SELECT data, holes FROM file_parts WHERE file_id = ? AND seq = ?")
                .bind(id)
                .bind(seq)
                .fetch_optional(pool)
                .await?
        else {
            break;
        };
        let data: Vec<u8> = row.try_get("data")?;
        let holes: Option<Vec<u8>> = row.try_get("holes")?;
        let holes = decode_holes(holes.as_deref().unwrap_or_default())?;
        let (Some(&(_, first)), Some(&(_, last))) = (holes.first(), holes.last()) else {
            if out.send(Ok(Bytes::from(data))).await.is_err() {
                return Ok(());
            }
            continue;
        };
        // A template in the range whose body was not cut out (a suspected
        // duplicate) is passed over. A part is written with the templates of
        // its segment, so its bodies are about a segment's bytes at most.
        let bodies: Vec<(i64, String)> = sqlx::query_as(
            "SELECT line_number, body FROM request_templates \
             WHERE file_id = ? AND line_number BETWEEN ? AND ? ORDER BY line_number",
        )
        .bind(id)
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await?;
        let mut bodies = bodies.into_iter();
        let mut buf = Vec::with_capacity(DOWNLOAD_CHUNK);
        let mut from = 0;
        for (at, line) in holes {
            let body = loop {
                let (n, body) = bodies.next().ok_or_else(|| missing_body(id, line))?;
                if n == line {
                    break body;
                }
                if n > line {
                    return Err(missing_body(id, line));
                }
            };
            let gap = data.get(from..at).ok_or_else(|| {
                StoreError::Invalid(format!("file {id}: a part's hole at {at} is out of order"))
            })?;
            buf.extend_from_slice(gap);
            buf.extend_from_slice(body.as_bytes());
            from = at;
            if buf.len() >= DOWNLOAD_CHUNK {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(DOWNLOAD_CHUNK));
                if out.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return Ok(());
                }
            }
        }
        buf.extend_from_slice(&data[from..]);
        if out.send(Ok(Bytes::from(buf))).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

impl SqliteStore {
    /// The original bytes of an input file, one stored part at a time: a
    /// task reads them ahead into a small channel, so memory stays flat.
    fn file_parts_stream(&self, id: FileId) -> ByteStream {
        let pool = self.reader.clone();
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(2);
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
