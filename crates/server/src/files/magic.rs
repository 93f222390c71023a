//! What the first bytes of an upload say it is, and whether that agrees with the type
//! the client declared. The check guards what matters: a type served inline (raster
//! images, audio, video) is kept only when the bytes are of that kind.

/// Bytes of an upload's start that [`kind`] looks at.
pub const HEAD: usize = 64;

/// The generic type: no claim about the bytes.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The type the first bytes show, for the formats recognised by their magic.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let at = |i: usize, magic: &[u8]| head.get(i..i + magic.len()) == Some(magic);
    Some(match () {
        _ if at(0, b"\x89PNG\r\n\x1a\n") => "image/png",
        _ if at(0, b"\xff\xd8\xff") => "image/jpeg",
        _ if at(0, b"GIF87a") || at(0, b"GIF89a") => "image/gif",
        _ if at(0, b"RIFF") && at(8, b"WEBP") => "image/webp",
        _ if at(0, b"RIFF") && at(8, b"WAVE") => "audio/wav",
        _ if at(4, b"ftyp") => match head.get(8..12) {
            Some(b"avif") | Some(b"avis") => "image/avif",
            Some(b"heic") | Some(b"heix") => "image/heic",
            Some(b"M4A ") => "audio/mp4",
            Some(b"qt  ") => "video/quicktime",
            _ => "video/mp4",
        },
        _ if at(0, b"\x1a\x45\xdf\xa3") => "video/webm",
        _ if at(0, b"OggS") => "audio/ogg",
        _ if at(0, b"fLaC") => "audio/flac",
        _ if at(0, b"ID3") || at(0, b"\xff\xfb") || at(0, b"\xff\xf3") || at(0, b"\xff\xf2") => {
            "audio/mpeg"
        }
        _ if at(0, b"\xff\xf1") || at(0, b"\xff\xf9") => "audio/aac",
        _ if at(0, b"%PDF-") => "application/pdf",
        _ if at(0, b"PK\x03\x04") => "application/zip",
        _ if at(0, b"\x1f\x8b") => "application/gzip",
        _ => return None,
    })
}

/// Formats that hold others (a `.docx` is a zip, an `.m4v` an MP4): a declared type
/// more specific than what their magic says is taken as declared.
fn is_container(sniffed: &str) -> bool {
    matches!(
        sniffed,
        "application/zip" | "application/gzip" | "video/mp4" | "video/quicktime" | "audio/ogg"
    )
}

/// Raster images a browser shows in `<img>`.
pub fn is_raster_image(kind: &str) -> bool {
    matches!(
        kind,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

/// Whether a stored type is served inline: raster images, audio and video, whose bytes
/// were checked on upload. Anything else (HTML and SVG included) is an attachment.
pub fn is_inline(kind: &str) -> bool {
    is_raster_image(kind) || kind.starts_with("audio/") || kind.starts_with("video/")
}

/// The declared type's essence (`type/subtype`, lower case, parameters dropped); the
/// generic type when none or not a media type.
pub fn normalize(declared: Option<&str>) -> String {
    let essence = declared
        .and_then(|d| d.split(';').next())
        .map(|d| d.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((t, sub)) if token(t) && token(sub) => essence,
        _ => OCTET_STREAM.to_string(),
    }
}

/// Other names browsers and tools give the recognised types.
fn canonical(kind: &str) -> &str {
    match kind {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "audio/mp3" | "audio/x-mpeg" => "audio/mpeg",
        "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "audio/wav",
        "audio/x-flac" => "audio/flac",
        "audio/x-m4a" | "audio/m4a" => "audio/mp4",
        "application/x-zip-compressed" | "application/x-zip" => "application/zip",
        "application/x-gzip" => "application/gzip",
        "video/x-matroska" => "video/webm",
        other => other,
    }
}

/// The type to keep for an upload declared `declared` (normalized) whose bytes start
/// with `head`, or why it is refused.
pub fn check(declared: &str, head: &[u8]) -> Result<String, String> {
    let sniffed = sniff(head);
    let declared = canonical(declared);
    let media = |k: &str| k.starts_with("audio/") || k.starts_with("video/");
    match sniffed {
        _ if declared == OCTET_STREAM => Ok(sniffed.unwrap_or(OCTET_STREAM).to_string()),
        Some(s) if s == declared => Ok(s.to_string()),
        // Audio and video share containers (WebM, Ogg, MP4).
        Some(s) if media(declared) && media(s) => Ok(declared.to_string()),
        Some(s) if is_container(s) && !is_inline(declared) => Ok(declared.to_string()),
        Some(s) => Err(format!("the bytes are {s}, not {declared}")),
        None if is_inline(declared) => Err(format!(
            "the bytes are not {declared}: send a recognised format, or declare {OCTET_STREAM}"
        )),
        None => Ok(declared.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn recognises_common_formats() {
        assert_eq!(sniff(PNG), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a\x01\0"), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42"), Some("video/mp4"));
        assert_eq!(sniff(b"%PDF-1.7"), Some("application/pdf"));
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn declared_types_must_agree_with_the_bytes() {
        assert_eq!(check("image/png", PNG).unwrap(), "image/png");
        assert_eq!(check(OCTET_STREAM, PNG).unwrap(), "image/png");
        assert_eq!(check(OCTET_STREAM, b"hello").unwrap(), OCTET_STREAM);
        assert_eq!(
            check("image/jpg", b"\xff\xd8\xff\xe0").unwrap(),
            "image/jpeg"
        );
        // HTML or SVG is kept as declared, and never served inline.
        assert_eq!(check("text/html", b"<html>").unwrap(), "text/html");
        assert_eq!(check("image/svg+xml", b"<svg>").unwrap(), "image/svg+xml");
        assert!(!is_inline("text/html") && !is_inline("image/svg+xml"));
        // A claim to be an inline type needs the bytes of one.
        assert!(check("image/png", b"<html><script>alert(1)</script>").is_err());
        assert!(check("video/mp4", b"<html>").is_err());
        assert!(check("image/gif", PNG).is_err());
        assert!(check("text/plain", PNG).is_err());
        // Containers: a .docx is a zip, WebM audio is audio.
        let docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
        assert_eq!(check(docx, b"PK\x03\x04").unwrap(), docx);
        assert_eq!(
            check("audio/webm", b"\x1a\x45\xdf\xa3").unwrap(),
            "audio/webm"
        );
        assert!(check("image/png", b"PK\x03\x04").is_err());
    }

    #[test]
    fn declared_types_are_normalized() {
        assert_eq!(normalize(Some("Image/PNG; charset=x")), "image/png");
        assert_eq!(normalize(Some("nonsense")), OCTET_STREAM);
        assert_eq!(normalize(Some("a/b c")), OCTET_STREAM);
        assert_eq!(normalize(None), OCTET_STREAM);
    }
}
