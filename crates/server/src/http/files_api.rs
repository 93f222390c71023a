//! Files over HTTP: upload (multipart or a raw body, streamed), download (Bearer or a
//! signed link, with ranges), and a fresh link for a file the caller may read.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::User;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::files::{FileView, Files, LinkError, NewUpload, UploadError, magic};
use crate::store::{FileRecord, StoreError};

/// Room for the multipart framing around the file part.
const MULTIPART_SLACK: u64 = 64 * 1024;

fn store_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failed");
    match e {
        StoreError::Closed | StoreError::Unavailable(_) => {
            ApiError::unavailable("unavailable", "the store is unavailable")
        }
        StoreError::Rejected(_) => ApiError::internal(),
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        match e {
            UploadError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            UploadError::QuotaExceeded(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                e.to_string(),
            ),
            UploadError::Invalid(m) => ApiError::bad_request(m),
            UploadError::Body(m) => ApiError::bad_request(m),
            UploadError::Storage(e) => {
                tracing::error!(error = %e, "storing a file failed");
                ApiError::internal()
            }
            UploadError::Store(e) => store_failed(e),
        }
    }
}

/// The raw upload's name header: percent-encoded UTF-8 is decoded.
fn header_name(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-file-name")?.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (raw[i], raw.get(i + 1).copied(), raw.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Uploads a file: `multipart/form-data` with a `file` part (a browser's `FormData`),
/// or a raw body with its `Content-Type` and an `X-File-Name` header (percent-encoded
/// UTF-8; `file` without one). Streamed to storage; larger than `files.max_bytes`: 413 `too_large`; past
/// the uploader's `files.user_quota_bytes`: 413 `quota_exceeded`; a declared raster
/// image, audio or video type whose bytes are not of that kind: 400. Files never shared
/// are deleted after `files.orphan_ttl_secs`.
#[utoipa::path(post, path = "/api/files", tag = "user",
    security(("bearer" = [])),
    params(("X-File-Name" = Option<String>, Header, description = "the file's name, for a raw body (percent-encoded UTF-8; default `file`)")),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "application/octet-stream"),
    )),
    responses((status = 201, body = FileView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn upload(
    User(me): User,
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let files = app.hub.files();
    let owner = me.user.id.clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = content_length(&headers);
    let record = match content_type.as_deref() {
        Some(ct)
            if ct
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data") =>
        {
            let max = files.config().max_bytes;
            if length.is_some_and(|n| n > max + MULTIPART_SLACK) {
                return Err(UploadError::TooLarge(max).into());
            }
            from_form(files, owner, ct, body).await?
        }
        None => {
            return Err(ApiError::bad_request(
                "no Content-Type: send multipart/form-data with a `file` part, or the raw \
                 bytes with their type",
            ));
        }
        Some(_) => {
            let new = NewUpload {
                owner,
                name: header_name(&headers).unwrap_or_else(|| "file".to_string()),
                declared: content_type,
            };
            files.upload(new, length, body.into_data_stream()).await?
        }
    };
    app.hub.metrics().files_uploaded.increment(1);
    app.hub.metrics().file_bytes_uploaded.increment(record.size);
    Ok((StatusCode::CREATED, Json(files.view(&record, true))).into_response())
}

/// Names of form parts: what a form's fields are called.
fn valid_part_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The upload of a multipart form: its one `file` part, kept only if the whole form is
/// well formed (other parts are read and dropped).
async fn from_form(
    files: &Files,
    owner: String,
    content_type: &str,
    body: Body,
) -> Result<FileRecord, ApiError> {
    let max = files.config().max_bytes;
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("multipart: {e}")))?;
    let limits = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(max + MULTIPART_SLACK));
    let mut form = multer::Multipart::with_constraints(body.into_data_stream(), boundary, limits);
    let mut kept = None;
    let read = read_form(files, &owner, max, &mut form, &mut kept).await;
    match (read, kept) {
        (Ok(()), Some(file)) => Ok(file),
        (Ok(()), None) => Err(ApiError::bad_request(
            "multipart form without a `file` part",
        )),
        (Err(e), kept) => {
            if let Some(file) = kept {
                files.discard(&file).await;
            }
            Err(e)
        }
    }
}

async fn read_form(
    files: &Files,
    owner: &str,
    max: u64,
    form: &mut multer::Multipart<'static>,
    kept: &mut Option<FileRecord>,
) -> Result<(), ApiError> {
    let failed = |e: multer::Error| match e {
        multer::Error::StreamSizeExceeded { .. } => ApiError::from(UploadError::TooLarge(max)),
        e => ApiError::bad_request(format!("multipart: {e}")),
    };
    while let Some(field) = form.next_field().await.map_err(failed)? {
        let name = field.name().unwrap_or_default();
        if !valid_part_name(name) {
            return Err(ApiError::bad_request(
                "multipart: part names are 1-64 characters of A-Za-z0-9_.-",
            ));
        }
        if name != "file" {
            continue;
        }
        if kept.is_some() {
            return Err(ApiError::bad_request(
                "multipart: more than one `file` part",
            ));
        }
        let new = NewUpload {
            owner: owner.to_string(),
            name: field.file_name().unwrap_or("file").to_string(),
            declared: field.content_type().map(|m| m.essence_str().to_string()),
        };
        let bytes = field.map(|chunk| {
            chunk.map_err(|e| match e {
                multer::Error::StreamSizeExceeded { .. } => TOO_LARGE.to_string(),
                e => e.to_string(),
            })
        });
        let file = files
            .upload(new, None, Box::pin(bytes))
            .await
            .map_err(|e| match e {
                UploadError::Body(m) if m == TOO_LARGE => UploadError::TooLarge(max),
                e => e,
            })?;
        *kept = Some(file);
    }
    Ok(())
}

/// How the form's reader says it passed its limit.
const TOO_LARGE: &str = "too large";

/// The multipart form of an upload: the `file` part; other parts (with names of
/// `A-Za-z0-9_.-`, as a form's fields have) are ignored.
pub struct UploadForm;

impl utoipa::ToSchema for UploadForm {}

impl utoipa::PartialSchema for UploadForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, Type,
        };
        ObjectBuilder::new()
            .property(
                "file",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
            )
            .required("file")
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[A-Za-z0-9_.-]{1,64}$")),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(
                ObjectBuilder::new().schema_type(Type::String).into(),
            )))
            .into()
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// A signed link's expiry (unix seconds).
    expires: Option<u64>,
    /// A signed link's signature.
    sig: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FilePath {
    /// The file's id.
    id: String,
}

/// The file `id` for a caller who may read it: by signed link (`expires` and `sig`, as
/// in the file's `url`) or Bearer token (its uploader, or a member of a room it was
/// shared in). Anyone else gets 404, as for an unknown file.
async fn readable(
    app: &App,
    id: &str,
    link: &LinkQuery,
    headers: &HeaderMap,
) -> Result<FileRecord, ApiError> {
    let files = app.hub.files();
    let gone = || ApiError::not_found("no such file");
    let signed = match (link.expires, link.sig.as_deref()) {
        (Some(expires), Some(sig)) => {
            files.verify(id, expires, sig).map_err(|e| match e {
                LinkError::Expired => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "link_expired",
                    "this link has expired: ask for a new one (GET /api/files/<id>/meta)",
                ),
                LinkError::Invalid => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "bad_signature",
                    "this link's signature is not valid",
                ),
            })?;
            true
        }
        (None, None) => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_signature",
                "a signed link needs both expires and sig",
            ));
        }
    };
    let user = match signed {
        true => None,
        false => Some(
            app.hub
                .authenticate(crate::auth::bearer(headers).as_deref())
                .map_err(|_| {
                    app.hub.metrics().auth_failures.increment(1);
                    ApiError::unauthorized(
                        "Authentication failed: send a Bearer token or use the file's signed url",
                    )
                })?,
        ),
    };
    let record = app
        .hub
        .store()
        .file(id)
        .await
        .map_err(store_failed)?
        .ok_or_else(gone)?;
    if let Some(user) = user
        && !files
            .may_read(&user.user.id, &record)
            .await
            .map_err(store_failed)?
    {
        return Err(gone());
    }
    Ok(record)
}

/// A single `bytes=` range of a file of `size` bytes: `Ok(None)` for the whole file
/// (no header, or one this server does not serve in parts), `Err` if unsatisfiable.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end = match b.is_empty() {
                true => size.saturating_sub(1),
                false => b
                    .parse::<u64>()
                    .map_err(|_| ())?
                    .min(size.saturating_sub(1)),
            };
            (start, end)
        }
        (true, true) => return Err(()),
    };
    if size == 0 || start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `filename*=UTF-8''...` as RFC 6266 spells a name of any characters.
fn disposition(inline: bool, name: &str) -> String {
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Downloads a file, by signed link (its `url`) or Bearer token. Raster images, audio
/// and video are served inline; anything else (HTML and SVG included) as an
/// attachment, always with `X-Content-Type-Options: nosniff` and a sandboxing
/// `Content-Security-Policy`. Single `Range: bytes=` requests get 206.
#[utoipa::path(get, path = "/api/files/{id}", tag = "user",
    security((), ("bearer" = [])),
    params(FilePath, LinkQuery),
    responses((status = 200, description = "the file's bytes, with the file's type", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "the requested range"),
        (status = 304, description = "not modified (If-None-Match)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn download(
    State(app): State<App>,
    Path(FilePath { id }): Path<FilePath>,
    link: Result<Query<LinkQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(link) = link?;
    let f = readable(&app, &id, &link, &headers).await?;
    let etag = format!("\"{}\"", f.sha256);
    let inline = magic::is_inline(&f.kind);
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, f.kind.as_str())
        .header(header::CONTENT_DISPOSITION, disposition(inline, &f.name))
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        )
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        .header(header::ETAG, etag.as_str())
        .header(header::ACCEPT_RANGES, "bytes");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid headers"));
    }
    let (start, len) = match range(&headers, f.size) {
        Ok(None) => (0, f.size),
        Ok(Some((start, end))) => {
            response = response.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", f.size),
            );
            (start, end - start + 1)
        }
        Err(()) => {
            let mut e = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {} bytes", f.size),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", f.size)) {
                e.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(e);
        }
    };
    let bytes = app.hub.files().read(&f.id, start, len).await.map_err(|e| {
        tracing::error!(error = %e, file = %f.id, "reading a file failed");
        match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::not_found("no such file"),
            _ => ApiError::internal(),
        }
    })?;
    Ok(response
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(bytes))
        .expect("valid headers"))
}

/// A file's metadata with a fresh signed `url`, for the caller who may read it (its
/// uploader, or a member of a room it was shared in); anyone else 404.
#[utoipa::path(get, path = "/api/files/{id}/meta", tag = "user",
    security(("bearer" = [])),
    params(FilePath),
    responses((status = 200, body = FileView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn meta(
    State(app): State<App>,
    Path(FilePath { id }): Path<FilePath>,
    headers: HeaderMap,
) -> Result<Json<FileView>, ApiError> {
    let none = LinkQuery {
        expires: None,
        sig: None,
    };
    let f = readable(&app, &id, &none, &headers).await?;
    Ok(Json(app.hub.files().view(&f, true)))
}
