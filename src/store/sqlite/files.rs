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
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::mpsc;

/// Bytes of templates, or of the original file, written at a time.
const SEGMENT_BYTES: usize = 1 << 20;
/// Incoming chunks are cut to this size, so one huge chunk cannot make a
/// segment huge.
const SLICE_BYTES: usize = 256 << 10;
/// Templates per INSERT statement (nine parameters each, well under
/// SQLite's limit of 32766).
const ROWS_PER_INSERT: usize = 500;

/// One valid line, owned until its segment is written.
struct Template {
    line: i64,
    custom_id: String,
    path: String,
    body: String,
    model: String,
    prefix_key: i64,
}

/// The parser's running state for one upload: the shared part
/// (`store::ingest`) and the templates not yet written.
struct Ingest<'l> {
    parse: Parse<'l>,
    templates: Vec<Template>,
    template_bytes: usize,
    /// The next part's number.
    seq: i64,
    count: u64,
}

impl<'l> Ingest<'l> {
    fn new(limits: &'l IngestLimits) -> Self {
        Self {
            parse: Parse::new(limits, SLICE_BYTES),
            templates: Vec::new(),
            template_bytes: 0,
            seq: 0,
            count: 0,
        }
    }

    fn line(&mut self, raw: RawLine<'_>) {
        let Some((number, p)) = self.parse.line(raw) else {
            return;
        };
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

    fn full(&self) -> bool {
        self.template_bytes >= SEGMENT_BYTES || self.parse.part.len() >= SEGMENT_BYTES
    }
}

impl SqliteStore {
    /// Writes the buffered templates and original bytes in one transaction.
    async fn write_segment(&self, file_id: FileId, st: &mut Ingest<'_>) -> Result<()> {
        if st.templates.is_empty() && st.parse.part.is_empty() {
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
        if !st.parse.part.is_empty() {
            sqlx::query("INSERT INTO file_parts (file_id, seq, data, holes) VALUES (?, ?, ?, ?)")
                .bind(file_id)
                .bind(st.seq)
                .bind(st.parse.part.data.as_slice())
                .bind(st.parse.part.holes.as_slice())
                .execute(&mut *tx)
                .await?;
            st.seq += 1;
        }
        tx.commit().await?;
        st.templates.clear();
        st.template_bytes = 0;
        st.parse.part = Part::default();
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
            st.parse.received(chunk.len())?;
            for slice in chunk.chunks(SLICE_BYTES) {
                st.parse.keep(slice);
                splitter.push(slice, |line| st.line(line));
                st.parse.compact(&splitter);
                if st.full() {
                    self.write_segment(file_id, &mut st).await?;
                }
            }
        }
        splitter.finish(|line| st.line(line));
        st.parse.compact(&splitter);
        debug_assert!(st.parse.all_settled(), "every byte is settled at the end");
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
            let (dups, dup_errors) = if st.parse.check_duplicates {
                remove_duplicates(&mut tx, file_id, keep).await?
            } else {
                (0, Vec::new())
            };
            let mut error_count = st.parse.error_count + dups;
            let mut errors: Vec<LineError> =
                st.parse.errors.into_iter().chain(dup_errors).collect();
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
            let urls: Vec<String> = st.parse.urls.into_iter().collect();
            let row = sqlx::query(&format!(
                "INSERT INTO files (id, owner, filename, purpose, kind, bytes, template_count, \
                 error_count, errors, urls, created_at, expires_at) \
                 VALUES (?, ?, ?, 'batch', 'input', ?, ?, ?, ?, ?, ?, ?) RETURNING {FILE_COLUMNS}"
            ))
            .bind(file_id)
            .bind(&new.owner)
            .bind(&new.filename)
            .bind(st.parse.bytes as i64)
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

/// Sends the original bytes of input file `id` down `out`, one part at a
/// time, with the bodies cut out of each part read back from its templates
/// (`store::holes`). Stops quietly when the reader goes away.
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
        let bodies = |first: i64, last: i64| {
            sqlx::query_as::<_, (i64, String)>(
                "SELECT line_number, body FROM request_templates \
                     WHERE file_id = ? AND line_number BETWEEN ? AND ? ORDER BY line_number",
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
