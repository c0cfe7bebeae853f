//! Where video-to-video's input frames come from (docs/streamdit.md, "Video-to-video
//! input"): a YUV4MPEG2 file or pipe (8-bit 4:2:0 or 4:4:4), raw RGB24 of a stated size, or
//! a folder of PNG frames, each read one frame at a time as RGB8 and fitted to the
//! profile's frame size by [`fit_frame`] (scale to cover, bilinear, centre crop).
//!
//! Y4M colour: BT.601, limited range unless the header says `XCOLORRANGE=FULL` (the
//! inverse of the writer in [`super::sink`]); 4:2:0 chroma (any siting tag) is upsampled
//! by repeating each sample over its 2x2 block. Bad input is a named error: a header that is
//! not YUV4MPEG2, a missing or zero size, an unsupported chroma format or bit depth, a frame
//! marker that is not `FRAME`, a file that ends inside a frame.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Longest header line accepted (stream or frame header).
const MAX_HEADER: usize = 4096;
/// Largest frame side accepted, so a corrupt header cannot ask for terabytes.
const MAX_SIDE: usize = 16384;

/// A sequence of RGB8 frames of one size.
pub trait FrameSource: Send {
    /// Reads the next frame into `out` (replacing its contents) as RGB8 `[H, W, 3]` at
    /// [`size`](Self::size); `Ok(false)` at the clean end of the input (no partial frame).
    fn read_frame(&mut self, out: &mut Vec<u8>) -> Result<bool>;
    /// `(width, height)` of the frames.
    fn size(&self) -> (usize, usize);
    /// The input's name in errors and messages.
    fn name(&self) -> &str;
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8], name: &str) -> Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(name, e)),
        }
    }
    Ok(at)
}

fn y4m_error(name: &str, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("input video `{name}` (Y4M): {what}"))
}

/// Chroma layout of a Y4M stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chroma {
    C420,
    C444,
}

/// A YUV4MPEG2 stream, 8-bit 4:2:0 (`C420jpeg`, `C420paldv`, `C420mpeg2`, `C420`, or no `C`
/// tag) or 4:4:4 (`C444`).
pub struct Y4mSource<R: Read> {
    r: BufReader<R>,
    name: String,
    width: usize,
    height: usize,
    chroma: Chroma,
    full_range: bool,
    frames: u64,
    planes: Vec<u8>,
}

/// Reads one `\n`-terminated line of at most [`MAX_HEADER`] bytes; `None` at a clean end
/// before its first byte.
fn header_line(r: &mut impl BufRead, name: &str, what: &str) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut limited = r.take(MAX_HEADER as u64 + 1);
    limited
        .read_until(b'\n', &mut line)
        .map_err(|e| Error::io(name, e))?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(y4m_error(
            name,
            if line.len() > MAX_HEADER {
                format!("{what} longer than {MAX_HEADER} bytes without a newline")
            } else {
                format!("the input ends inside the {what} (`{}`)", String::from_utf8_lossy(&line))
            },
        ));
    }
    line.pop();
    Ok(Some(line))
}

impl<R: Read> Y4mSource<R> {
    /// Parses the stream header of `r`.
    pub fn new(r: R, name: &str) -> Result<Self> {
        let mut r = BufReader::new(r);
        let line = header_line(&mut r, name, "stream header")?
            .ok_or_else(|| y4m_error(name, "empty input: expected a `YUV4MPEG2 ...` header"))?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut tokens = text.split(' ').filter(|t| !t.is_empty());
        if tokens.next() != Some("YUV4MPEG2") {
            return Err(y4m_error(
                name,
                format!(
                    "expected the stream header to start with `YUV4MPEG2`, found `{}`",
                    text.chars().take(40).collect::<String>()
                ),
            ));
        }
        let (mut width, mut height) = (None, None);
        let mut chroma = Chroma::C420;
        let mut full_range = false;
        for t in tokens {
            let (tag, value) = t.split_at(1);
            let side = |v: &str, axis: &str| -> Result<usize> {
                match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_SIDE).contains(&n) => Ok(n),
                    _ => Err(y4m_error(
                        name,
                        format!("{axis} `{v}`: expected a whole number in 1..={MAX_SIDE}"),
                    )),
                }
            };
            match tag {
                "W" => width = Some(side(value, "width W")?),
                "H" => height = Some(side(value, "height H")?),
                "C" => {
                    chroma = match value {
                        "420jpeg" | "420paldv" | "420mpeg2" | "420" => Chroma::C420,
                        "444" => Chroma::C444,
                        other => {
                            return Err(y4m_error(
                                name,
                                format!(
                                    "chroma format `C{other}` is not supported: expected 8-bit \
                                     4:2:0 (C420jpeg, C420paldv, C420mpeg2, C420) or 4:4:4 \
                                     (C444); convert with `ffmpeg -i IN -pix_fmt yuv420p OUT.y4m`"
                                ),
                            ))
                        }
                    }
                }
                "X" if value.eq_ignore_ascii_case("COLORRANGE=FULL") => full_range = true,
                // Frame rate, interlacing, aspect ratio: not needed to read the pictures.
                _ => {}
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            return Err(y4m_error(
                name,
                format!("the stream header `{text}` lacks its width (W) or height (H)"),
            ));
        };
        Ok(Y4mSource {
            r,
            name: name.to_string(),
            width,
            height,
            chroma,
            full_range,
            frames: 0,
            planes: Vec::new(),
        })
    }

    /// `(chroma width, chroma height)`.
    fn chroma_size(&self) -> (usize, usize) {
        match self.chroma {
            Chroma::C420 => (self.width.div_ceil(2), self.height.div_ceil(2)),
            Chroma::C444 => (self.width, self.height),
        }
    }
}

/// RGB8 of a YCbCr sample, BT.601, limited or full range (the inverse of
/// [`super::sink::bt601_limited`] for limited range).
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8, full: bool) -> [u8; 3] {
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
    let (r, g, b) = if full {
        (
            y + 1.402 * cr,
            y - 0.344_136 * cb - 0.714_136 * cr,
            y + 1.772 * cb,
        )
    } else {
        // Inverse of Y' = 16 + 219 E'y, Cb = 128 + 224 (E'b - E'y) / 1.772, Cr = 128 + 224
        // (E'r - E'y) / 1.402, scaled to 0..255.
        let ys = (y - 16.0) * 255.0 / 219.0;
        let (cbs, crs) = (cb * 255.0 / 224.0, cr * 255.0 / 224.0);
        (
            ys + 1.402 * crs,
            ys - 0.344_136 * cbs - 0.714_136 * crs,
            ys + 1.772 * cbs,
        )
    };
    [r, g, b].map(|v| v.round().clamp(0.0, 255.0) as u8)
}

impl<R: Read + Send> FrameSource for Y4mSource<R> {
    fn read_frame(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let name = self.name.clone();
        let what = format!("header of frame {}", self.frames);
        let Some(line) = header_line(&mut self.r, &name, &what)? else {
            return Ok(false);
        };
        if !(line.starts_with(b"FRAME") && matches!(line.get(5), None | Some(b' '))) {
            return Err(y4m_error(
                &name,
                format!(
                    "frame {}: expected a `FRAME` marker, found `{}` (a wrong W/H or chroma in \
                     the header, or a corrupt file)",
                    self.frames,
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                ),
            ));
        }
        let (cw, ch) = self.chroma_size();
        let (w, h) = (self.width, self.height);
        let len = w * h + 2 * cw * ch;
        self.planes.resize(len, 0);
        let got = fill(&mut self.r, &mut self.planes, &name)?;
        if got < len {
            return Err(y4m_error(
                &name,
                format!(
                    "truncated: frame {} ends after {got} of its {len} bytes ({w}x{h}, {})",
                    self.frames,
                    match self.chroma {
                        Chroma::C420 => "4:2:0",
                        Chroma::C444 => "4:4:4",
                    }
                ),
            ));
        }
        let (luma, chroma) = self.planes.split_at(w * h);
        let (u, v) = chroma.split_at(cw * ch);
        out.clear();
        out.reserve(w * h * 3);
        let sub = usize::from(self.chroma == Chroma::C420);
        for y in 0..h {
            for x in 0..w {
                let c = (y >> sub) * cw + (x >> sub);
                out.extend_from_slice(&ycbcr_to_rgb(luma[y * w + x], u[c], v[c], self.full_range));
            }
        }
        self.frames += 1;
        Ok(true)
    }

    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Raw RGB24 frames of a size given by the caller (`--input-size WxH`).
pub struct RawRgbSource<R: Read> {
    r: R,
    name: String,
    width: usize,
    height: usize,
    frames: u64,
}

impl<R: Read> RawRgbSource<R> {
    pub fn new(r: R, name: &str, width: usize, height: usize) -> Result<Self> {
        if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
            return Err(Error::Invalid(format!(
                "input size {width}x{height}: expected each side in 1..={MAX_SIDE}"
            )));
        }
        Ok(RawRgbSource {
            r,
            name: name.to_string(),
            width,
            height,
            frames: 0,
        })
    }
}

impl<R: Read + Send> FrameSource for RawRgbSource<R> {
    fn read_frame(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let len = self.width * self.height * 3;
        out.resize(len, 0);
        let got = fill(&mut self.r, out, &self.name)?;
        if got == 0 {
            return Ok(false);
        }
        if got < len {
            return Err(Error::Invalid(format!(
                "input video `{}` (raw RGB24, --input-size {}x{}): the input ends {got} bytes \
                 into frame {}, whose size is {len} bytes: the frames are not {}x{}, or the \
                 input was cut",
                self.name, self.width, self.height, self.frames, self.width, self.height
            )));
        }
        self.frames += 1;
        Ok(true)
    }

    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A folder of PNG frames read in file-name order (RGB or RGBA 8-bit, or grey, all of the
/// first frame's size).
pub struct PngFolderSource {
    files: Vec<PathBuf>,
    next: usize,
    name: String,
    width: usize,
    height: usize,
}

impl PngFolderSource {
    pub fn new(dir: &Path) -> Result<Self> {
        let name = dir.display().to_string();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("png"))
            })
            .collect();
        files.sort();
        let Some(first) = files.first() else {
            return Err(Error::Invalid(format!(
                "input video folder `{name}`: expected PNG frames (*.png) in it, found none"
            )));
        };
        let (_, width, height) = read_png(first)?;
        Ok(PngFolderSource {
            files,
            next: 0,
            name,
            width,
            height,
        })
    }
}

/// An 8-bit PNG as RGB8 with its size.
fn read_png(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let bad = |what: String| Error::Invalid(format!("input frame `{}`: {what}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let data = &buf[..info.buffer_size()];
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => data.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        other => return Err(bad(format!("colour type {other:?}: expected RGB, RGBA or grey"))),
    };
    Ok((rgb, w, h))
}

impl FrameSource for PngFolderSource {
    fn read_frame(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(false);
        };
        let (rgb, w, h) = read_png(path)?;
        if (w, h) != (self.width, self.height) {
            return Err(Error::Invalid(format!(
                "input frame `{}`: {w}x{h}, but the folder's first frame is {}x{}: expected \
                 frames of one size",
                path.display(),
                self.width,
                self.height
            )));
        }
        *out = rgb;
        self.next += 1;
        Ok(true)
    }

    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Opens an input video: `-` is standard input (raw RGB24 when `raw_size` is given, Y4M
/// otherwise); a directory is a PNG folder; any other path is a Y4M file (raw RGB24 with
/// `raw_size`).
pub fn open_source(spec: &str, raw_size: Option<(usize, usize)>) -> Result<Box<dyn FrameSource>> {
    if spec == "-" {
        let stdin = std::io::stdin();
        return Ok(match raw_size {
            Some((w, h)) => Box::new(RawRgbSource::new(stdin, "<stdin>", w, h)?),
            None => Box::new(Y4mSource::new(stdin, "<stdin>")?),
        });
    }
    let path = Path::new(spec);
    if path.is_dir() {
        if raw_size.is_some() {
            return Err(Error::Invalid(format!(
                "--input-size: for raw RGB24 input (a file or `-`), but `{spec}` is a folder of PNG frames"
            )));
        }
        return Ok(Box::new(PngFolderSource::new(path)?));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(match raw_size {
        Some((w, h)) => Box::new(RawRgbSource::new(file, spec, w, h)?),
        None => Box::new(Y4mSource::new(file, spec)?),
    })
}

/// Fits a frame `src [sh, sw, 3]` to `tw x th`: scaled by `max(tw/sw, th/sh)` so it covers
/// the target (aspect kept), sampled bilinearly at pixel centres (edges clamped, no
/// prefilter), and cropped to the centre. The same size is returned unchanged.
pub fn fit_frame(src: &[u8], sw: usize, sh: usize, tw: usize, th: usize) -> Vec<u8> {
    if (sw, sh) == (tw, th) {
        return src.to_vec();
    }
    let scale = (tw as f64 / sw as f64).max(th as f64 / sh as f64);
    // Offset of the crop in the scaled image.
    let ox = (sw as f64 * scale - tw as f64) / 2.0;
    let oy = (sh as f64 * scale - th as f64) / 2.0;
    let axis = |t: usize, off: f64, n: usize| -> (usize, usize, f64) {
        let s = ((t as f64 + 0.5 + off) / scale - 0.5).clamp(0.0, (n - 1) as f64);
        let i = s.floor() as usize;
        (i, (i + 1).min(n - 1), s - i as f64)
    };
    let mut out = Vec::with_capacity(tw * th * 3);
    for y in 0..th {
        let (y0, y1, fy) = axis(y, oy, sh);
        for x in 0..tw {
            let (x0, x1, fx) = axis(x, ox, sw);
            for c in 0..3 {
                let p = |yy: usize, xx: usize| f64::from(src[(yy * sw + xx) * 3 + c]);
                let top = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                let bottom = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                out.push((top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::sink::{FrameSink, Y4mSink};

    fn frame(w: usize, h: usize, seed: usize) -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| {
                let (p, c) = (i / 3, i % 3);
                let (x, y) = (p % w, p / w);
                (40 + (x * 7 + y * 5 + c * 50 + seed * 11) % 170) as u8
            })
            .collect()
    }

    /// The engine's Y4M writer read back: smooth frames come back within the 4:2:0 and
    /// rounding error, frame count and end exact.
    #[test]
    fn reads_what_the_sink_writes() {
        let (w, h) = (16, 12);
        let mut sink = Y4mSink::new(Vec::new(), "mem", w, h, 16.0).unwrap();
        // Flat 2x2 blocks: 4:2:0 loses nothing but rounding.
        let blocky = |seed: usize| -> Vec<u8> {
            let f = frame(w / 2, h / 2, seed);
            let mut out = Vec::new();
            for y in 0..h {
                for x in 0..w {
                    out.extend_from_slice(&f[((y / 2) * (w / 2) + x / 2) * 3..][..3]);
                }
            }
            out
        };
        let frames: Vec<Vec<u8>> = (0..3).map(blocky).collect();
        for f in &frames {
            sink.write_frame(f).unwrap();
        }
        let bytes = sink.into_inner().unwrap();
        let mut src = Y4mSource::new(&bytes[..], "mem").unwrap();
        assert_eq!(src.size(), (w, h));
        let mut out = Vec::new();
        for f in &frames {
            assert!(src.read_frame(&mut out).unwrap());
            let worst = out
                .iter()
                .zip(f)
                .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                .max()
                .unwrap();
            assert!(worst <= 3, "round trip error {worst}");
        }
        assert!(!src.read_frame(&mut out).unwrap());
        // Cut inside the last frame: named, with the byte count.
        let cut = &bytes[..bytes.len() - 10];
        let mut src = Y4mSource::new(cut, "cut.y4m").unwrap();
        assert!(src.read_frame(&mut out).unwrap());
        assert!(src.read_frame(&mut out).unwrap());
        let e = src.read_frame(&mut out).unwrap_err().to_string();
        assert!(e.contains("cut.y4m") && e.contains("truncated") && e.contains("frame 2"), "{e}");
    }

    /// 4:4:4, full range, written by hand: exact colours.
    #[test]
    fn reads_444_full_range() {
        let mut bytes = b"YUV4MPEG2 W2 H1 F25:1 C444 XCOLORRANGE=FULL\nFRAME\n".to_vec();
        // Y, Cb, Cr planes: white, then pure red in full-range BT.601.
        bytes.extend_from_slice(&[255, 76, 128, 85, 128, 255]);
        let mut src = Y4mSource::new(&bytes[..], "m").unwrap();
        let mut out = Vec::new();
        assert!(src.read_frame(&mut out).unwrap());
        assert_eq!(out[..3], [255, 255, 255]);
        assert!(out[3] >= 253 && out[4] <= 2 && out[5] <= 2, "{out:?}");
        assert!(!src.read_frame(&mut out).unwrap());
    }

    #[test]
    fn malformed_headers_are_named() {
        let err = |b: &[u8]| match Y4mSource::new(b, "x.y4m") {
            Ok(mut s) => s.read_frame(&mut Vec::new()).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(err(b"").contains("empty input"));
        assert!(err(b"RIFF....\n").contains("YUV4MPEG2"));
        assert!(err(b"YUV4MPEG2 W16\n").contains("lacks its width"));
        assert!(err(b"YUV4MPEG2 W0 H4\n").contains("width W `0`"));
        assert!(err(b"YUV4MPEG2 W4 H4 C422\n").contains("C422` is not supported"));
        assert!(err(b"YUV4MPEG2 W4 H4 C420p10\n").contains("not supported"));
        assert!(err(b"YUV4MPEG2 W4 H4").contains("ends inside the stream header"));
        assert!(err(b"YUV4MPEG2 W4 H4\nFRAMX\n").contains("`FRAME` marker"));
        assert!(err(b"YUV4MPEG2 W4 H4\nFRAME\n\x10\x10").contains("after 2 of its 24 bytes"));
    }

    #[test]
    fn raw_frames_and_a_cut_frame() {
        let data = frame(4, 2, 0);
        let mut two = data.clone();
        two.extend_from_slice(&data[..5]);
        let mut src = RawRgbSource::new(&two[..], "raw", 4, 2).unwrap();
        let mut out = Vec::new();
        assert!(src.read_frame(&mut out).unwrap());
        assert_eq!(out, data);
        let e = src.read_frame(&mut out).unwrap_err().to_string();
        assert!(e.contains("5 bytes into frame 1") && e.contains("24 bytes"), "{e}");
        let mut src = RawRgbSource::new(&data[..], "raw", 4, 2).unwrap();
        assert!(src.read_frame(&mut out).unwrap());
        assert!(!src.read_frame(&mut out).unwrap());
        assert!(RawRgbSource::new(&data[..], "raw", 0, 2).is_err());
    }

    /// Same size: unchanged. Wider: the centre columns, scaled to cover the height.
    #[test]
    fn fit_scales_to_cover_and_crops_the_centre() {
        let f = frame(6, 4, 1);
        assert_eq!(fit_frame(&f, 6, 4, 6, 4), f);
        // 8x4 -> 4x4: scale 1 (covers the height), columns 2..6.
        let wide = frame(8, 4, 2);
        let got = fit_frame(&wide, 8, 4, 4, 4);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(got[(y * 4 + x) * 3..][..3], wide[(y * 8 + x + 2) * 3..][..3]);
            }
        }
        // 2x2 -> 4x4: a uniform frame stays uniform; the size is the target's.
        let flat = vec![77u8; 2 * 2 * 3];
        assert_eq!(fit_frame(&flat, 2, 2, 4, 4), vec![77u8; 4 * 4 * 3]);
        // Downscale by 2 of a frame constant per 2x2 block keeps the block colours.
        let down = fit_frame(&frame(3, 3, 0), 3, 3, 2, 2);
        assert_eq!(down.len(), 12);
    }
}
