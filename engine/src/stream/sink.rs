//! Frame sinks: where decoded RGB8 video frames go. A Y4M file plays in most players and
//! feeds encoders; a PNG sequence is easy to inspect; raw RGB24 on stdout pipes into ffmpeg.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::PendingFile;
use crate::error::{Error, Result};

/// Takes RGB8 video frames (`width * height * 3` bytes, row-major) one at a time.
pub trait FrameSink: Send {
    /// Writes one frame.
    fn write_frame(&mut self, rgb: &[u8]) -> Result<()>;

    /// Flushes everything written; call once after the last frame.
    fn finish(&mut self) -> Result<()>;
}

/// Checks that `rgb` holds one `width x height` RGB frame.
fn check_frame(rgb: &[u8], width: usize, height: usize) -> Result<()> {
    let expected = width * height * 3;
    if rgb.len() != expected {
        return Err(Error::shape(
            "video frame",
            format!("{expected} bytes ({width}x{height} RGB)"),
            format!("{} bytes", rgb.len()),
        ));
    }
    Ok(())
}

/// The frame rate as a rational `num/den` for container headers: exact for integer and
/// simple fractional rates, NTSC-style (`30000/1001`) for rates within 1e-4 (relative) of
/// one, and otherwise the closest continued-fraction convergent with a denominator of at
/// most 1001.
pub fn fps_rational(fps: f64) -> (u32, u32) {
    let ntsc = (fps * 1.001).round();
    if fps.fract() != 0.0 && ntsc >= 1.0 && ((ntsc * 1000.0 / 1001.0) / fps - 1.0).abs() < 1e-4 {
        return ((ntsc * 1000.0) as u32, 1001);
    }
    // Continued fraction convergents h/k of fps.
    let (mut h0, mut h1, mut k0, mut k1) = (0u64, 1u64, 1u64, 0u64);
    let mut x = fps;
    loop {
        let a = x.floor();
        let (h2, k2) = (a as u64 * h1 + h0, a as u64 * k1 + k0);
        if k2 > 1001 || h2 > u64::from(u32::MAX) {
            break;
        }
        (h0, h1, k0, k1) = (h1, h2, k1, k2);
        let rest = x - a;
        if rest < 1e-9 || (h1 as f64 / k1 as f64 - fps).abs() < 1e-9 * fps {
            break;
        }
        x = 1.0 / rest;
    }
    (h1.max(1) as u32, k1.max(1) as u32)
}

/// A YUV4MPEG2 stream: 4:2:0 with centred chroma (`C420jpeg`), BT.601 limited range, square
/// pixels, progressive. Width and height must be even.
pub struct Y4mSink<W: Write + Send> {
    out: BufWriter<W>,
    name: String,
    width: usize,
    height: usize,
    /// One frame's planes Y, U, V (reused).
    planes: Vec<u8>,
}

impl<W: Write + Send> Y4mSink<W> {
    /// A Y4M stream into `out`; `name` (a path) names it in errors. Writes the header.
    pub fn new(out: W, name: &str, width: usize, height: usize, fps: f64) -> Result<Self> {
        if width == 0 || height == 0 || width % 2 == 1 || height % 2 == 1 {
            return Err(Error::shape(
                format!("{name}: Y4M 4:2:0 frame size"),
                "positive even width and height",
                format!("{width}x{height}"),
            ));
        }
        let (num, den) = fps_rational(fps);
        let mut sink = Y4mSink {
            out: BufWriter::new(out),
            name: name.to_string(),
            width,
            height,
            planes: vec![0; width * height * 3 / 2],
        };
        let header = format!(
            "YUV4MPEG2 W{width} H{height} F{num}:{den} Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n"
        );
        sink.out
            .write_all(header.as_bytes())
            .map_err(|e| Error::io(name, e))?;
        Ok(sink)
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> Result<W> {
        let name = self.name;
        self.out
            .into_inner()
            .map_err(|e| Error::io(&name, e.into_error()))
    }
}

/// BT.601 limited-range `(Y, Cb, Cr)` of an RGB8 pixel, unrounded.
pub fn bt601_limited(rgb: [u8; 3]) -> (f64, f64, f64) {
    let [r, g, b] = rgb.map(|v| f64::from(v) / 255.0);
    (
        16.0 + 65.481 * r + 128.553 * g + 24.966 * b,
        128.0 - 37.797 * r - 74.203 * g + 112.0 * b,
        128.0 + 112.0 * r - 93.786 * g - 18.214 * b,
    )
}

fn to_u8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

impl<W: Write + Send> FrameSink for Y4mSink<W> {
    fn write_frame(&mut self, rgb: &[u8]) -> Result<()> {
        check_frame(rgb, self.width, self.height)?;
        let (w, h) = (self.width, self.height);
        let (luma, chroma) = self.planes.split_at_mut(w * h);
        let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
        let pixel = |x: usize, y: usize| -> [u8; 3] {
            let i = (y * w + x) * 3;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        for y in 0..h {
            for x in 0..w {
                luma[y * w + x] = to_u8(bt601_limited(pixel(x, y)).0);
            }
        }
        // Chroma sits at the centre of each 2x2 block: the mean of its four pixels.
        for cy in 0..h / 2 {
            for cx in 0..w / 2 {
                let (mut u, mut v) = (0.0, 0.0);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (_, cb, cr) = bt601_limited(pixel(2 * cx + dx, 2 * cy + dy));
                    u += cb;
                    v += cr;
                }
                u_plane[cy * w / 2 + cx] = to_u8(u / 4.0);
                v_plane[cy * w / 2 + cx] = to_u8(v / 4.0);
            }
        }
        let name = &self.name;
        self.out
            .write_all(b"FRAME\n")
            .map_err(|e| Error::io(name, e))?;
        self.out
            .write_all(&self.planes)
            .map_err(|e| Error::io(name, e))
    }

    fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.name, e))
    }
}

/// Raw RGB24 frames back to back, e.g. for
/// `ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH -r FPS -i -`.
pub struct RawRgbSink<W: Write + Send> {
    out: BufWriter<W>,
    name: String,
    width: usize,
    height: usize,
}

impl<W: Write + Send> RawRgbSink<W> {
    /// A raw sink into `out`; `name` names it in errors.
    pub fn new(out: W, name: &str, width: usize, height: usize) -> Self {
        RawRgbSink {
            out: BufWriter::new(out),
            name: name.to_string(),
            width,
            height,
        }
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> Result<W> {
        let name = self.name;
        self.out
            .into_inner()
            .map_err(|e| Error::io(&name, e.into_error()))
    }
}

impl<W: Write + Send> FrameSink for RawRgbSink<W> {
    fn write_frame(&mut self, rgb: &[u8]) -> Result<()> {
        check_frame(rgb, self.width, self.height)?;
        self.out
            .write_all(rgb)
            .map_err(|e| Error::io(&self.name, e))
    }

    fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.name, e))
    }
}

/// One PNG file per frame. File names come from a pattern whose `*` is replaced by the
/// frame number in six digits: a directory `DIR` uses `DIR/frame_*.png`.
pub struct PngSequence {
    /// Pattern text before and after the `*`.
    prefix: String,
    suffix: String,
    width: usize,
    height: usize,
    next: u64,
}

impl PngSequence {
    /// Frames `dir/frame_000000.png`, `dir/frame_000001.png`, ...; creates `dir` if needed.
    pub fn new(dir: impl AsRef<Path>, width: usize, height: usize) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Self::with_pattern(&dir.join("frame_*.png").to_string_lossy(), width, height)
    }

    /// Frames named by `pattern` with its `*` replaced by the frame number (`out/*.png`,
    /// `out/shot_*.png`); a pattern without `*` gets `_*` before its extension
    /// (`out/clip.png` gives `out/clip_000000.png`). Creates the parent directory if needed.
    pub fn with_pattern(pattern: &str, width: usize, height: usize) -> Result<Self> {
        let (prefix, suffix) = match pattern.rfind('*') {
            Some(i) => (pattern[..i].to_string(), pattern[i + 1..].to_string()),
            None => match pattern.rfind('.') {
                Some(i) => (format!("{}_", &pattern[..i]), pattern[i..].to_string()),
                None => (format!("{pattern}_"), ".png".to_string()),
            },
        };
        if width == 0
            || height == 0
            || u32::try_from(width).is_err()
            || u32::try_from(height).is_err()
        {
            return Err(Error::shape(
                format!("{pattern}: PNG frame size"),
                "positive width and height below 2^32",
                format!("{width}x{height}"),
            ));
        }
        let first = PathBuf::from(format!("{prefix}0{suffix}"));
        if let Some(parent) = first.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(PngSequence {
            prefix,
            suffix,
            width,
            height,
            next: 0,
        })
    }

    /// The file of frame number `n`.
    pub fn path_of(&self, n: u64) -> PathBuf {
        PathBuf::from(format!("{}{n:06}{}", self.prefix, self.suffix))
    }

    /// Encodes one frame as an 8-bit RGB PNG and writes it to `path`.
    fn write_png(&self, path: &Path, rgb: &[u8]) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
        // Each frame appears whole or not at all.
        let mut file = PendingFile::create(path).map_err(std::io::Error::other)?;
        file.write_all(&bytes)?;
        file.commit().map_err(std::io::Error::other)
    }
}

impl FrameSink for PngSequence {
    fn write_frame(&mut self, rgb: &[u8]) -> Result<()> {
        check_frame(rgb, self.width, self.height)?;
        let path = self.path_of(self.next);
        self.write_png(&path, rgb)
            .map_err(|e| Error::io(&path, e))?;
        self.next += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A Y4M file that appears under its name only when [`FrameSink::finish`] succeeds: a run
/// that fails midway leaves no partial video.
struct Y4mFile(Y4mSink<PendingFile>);

impl FrameSink for Y4mFile {
    fn write_frame(&mut self, rgb: &[u8]) -> Result<()> {
        self.0.write_frame(rgb)
    }

    fn finish(&mut self) -> Result<()> {
        self.0.finish()?;
        self.0.out.get_mut().commit()
    }
}

/// Refuses a closed standard output: a run would otherwise succeed having written nothing.
fn check_stdout() -> Result<()> {
    if stdout_was_closed() {
        return Err(Error::Invalid(
            "output `-`: expected an open standard output for the raw frames, but stdout is \
             closed (`>&-`); redirect it to a file or a pipe"
                .into(),
        ));
    }
    Ok(())
}

/// Whether descriptor 1 was closed when the process started. Rust's runtime puts
/// `/dev/null`, opened read-write, in place of a closed standard descriptor before `main`;
/// a shell's `>/dev/null` opens it write-only, which stays allowed. Linux only (it reads
/// `/proc/self`); elsewhere `false`.
fn stdout_was_closed() -> bool {
    let target = std::fs::read_link("/proc/self/fd/1");
    let info = std::fs::read_to_string("/proc/self/fdinfo/1");
    let (Ok(target), Ok(info)) = (target, info) else {
        return false;
    };
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
    // O_ACCMODE is 3 and O_RDWR 2 on Linux.
    target == Path::new("/dev/null") && flags.is_some_and(|f| f & 3 == 2)
}

/// Opens a sink from an output spec: `-` = raw RGB24 on stdout; `*.y4m` = Y4M file; a path
/// ending in `/` or an existing directory = PNG sequence `frame_000000.png`, ... in it; a
/// `*.png` pattern = PNG sequence named by it (see [`PngSequence::with_pattern`]).
pub fn open_sink(spec: &str, width: usize, height: usize, fps: f64) -> Result<Box<dyn FrameSink>> {
    let lower = spec.to_ascii_lowercase();
    if spec == "-" {
        check_stdout()?;
        Ok(Box::new(RawRgbSink::new(
            std::io::stdout(),
            "<stdout>",
            width,
            height,
        )))
    } else if lower.ends_with(".y4m") {
        let file = PendingFile::create(spec)?;
        Ok(Box::new(Y4mFile(Y4mSink::new(file, spec, width, height, fps)?)))
    } else if spec.ends_with('/') || Path::new(spec).is_dir() {
        Ok(Box::new(PngSequence::new(spec, width, height)?))
    } else if lower.ends_with(".png") {
        Ok(Box::new(PngSequence::with_pattern(spec, width, height)?))
    } else {
        Err(Error::Invalid(format!(
            "output `{spec}`: expected `-` (raw RGB24 on stdout), a `.y4m` file, a directory \
             (ending in `/` or existing) for PNG frames, or a `.png` pattern such as `frames/*.png`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// A fresh, empty scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("streamdit-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn solid(width: usize, height: usize, rgb: [u8; 3]) -> Vec<u8> {
        rgb.repeat(width * height)
    }

    #[test]
    fn y4m_header_exact() {
        let sink = Y4mSink::new(Vec::new(), "mem", 128, 128, 16.0).unwrap();
        let bytes = sink.into_inner().unwrap();
        assert_eq!(
            bytes,
            b"YUV4MPEG2 W128 H128 F16:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n"
        );
    }

    #[test]
    fn frame_rates() {
        assert_eq!(fps_rational(16.0), (16, 1));
        assert_eq!(fps_rational(24.0), (24, 1));
        assert_eq!(fps_rational(29.97), (30000, 1001));
        assert_eq!(fps_rational(23.976), (24000, 1001));
        assert_eq!(fps_rational(59.94), (60000, 1001));
        assert_eq!(fps_rational(12.5), (25, 2));
        assert_eq!(fps_rational(7.25), (29, 4));
        assert_eq!(fps_rational(1.0 / 3.0), (1, 3));
    }

    #[test]
    fn y4m_frames_and_size() {
        let dir = scratch("y4m");
        let path = dir.join("out.y4m");
        let spec = path.to_str().unwrap();
        let mut sink = open_sink(spec, 128, 128, 16.0).unwrap();
        for k in 0..5u8 {
            sink.write_frame(&solid(128, 128, [k * 40, 100, 200]))
                .unwrap();
        }
        sink.finish().unwrap();
        drop(sink);
        let bytes = std::fs::read(&path).unwrap();
        let header = b"YUV4MPEG2 W128 H128 F16:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n".len();
        let frame = b"FRAME\n".len() + 128 * 128 * 3 / 2;
        assert_eq!(bytes.len(), header + 5 * frame);
        let frames = bytes.windows(6).filter(|w| w == b"FRAME\n").count();
        assert_eq!(frames, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A Y4M file appears only when finished: a run that stops midway leaves nothing, not
    /// a header and some frames.
    #[test]
    fn y4m_file_appears_only_when_finished() {
        let dir = scratch("y4m-atomic");
        let path = dir.join("out.y4m");
        let spec = path.to_str().unwrap();
        let mut sink = open_sink(spec, 4, 2, 16.0).unwrap();
        sink.write_frame(&solid(4, 2, [1, 2, 3])).unwrap();
        drop(sink);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "an unfinished run left {left:?}");
        let mut sink = open_sink(spec, 4, 2, 16.0).unwrap();
        sink.write_frame(&solid(4, 2, [1, 2, 3])).unwrap();
        assert!(!path.exists(), "visible before finish");
        sink.finish().unwrap();
        drop(sink);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.windows(6).filter(|w| w == b"FRAME\n").count(), 1);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Pure colours, converted by hand with BT.601 limited range
    /// (Y = 16 + 65.481 R' + 128.553 G' + 24.966 B', Cb = 128 - 37.797 R' - 74.203 G' + 112 B',
    /// Cr = 128 + 112 R' - 93.786 G' - 18.214 B', R' = R/255):
    /// black (16, 128, 128); white (235, 128, 128); red (81.481, 90.203, 240) -> (81, 90, 240);
    /// green (144.553, 53.797, 34.214) -> (145, 54, 34); blue (40.966, 240, 109.786) -> (41, 240, 110);
    /// grey 128 (16 + 219 * 128/255 = 125.929, 128, 128) -> (126, 128, 128).
    #[test]
    fn y4m_pure_colours() {
        let cases: [([u8; 3], [u8; 3]); 6] = [
            ([0, 0, 0], [16, 128, 128]),
            ([255, 255, 255], [235, 128, 128]),
            ([255, 0, 0], [81, 90, 240]),
            ([0, 255, 0], [145, 54, 34]),
            ([0, 0, 255], [41, 240, 110]),
            ([128, 128, 128], [126, 128, 128]),
        ];
        let (w, h) = (4, 2);
        for (rgb, [y, u, v]) in cases {
            let mut sink = Y4mSink::new(Vec::new(), "mem", w, h, 16.0).unwrap();
            let header_len = sink.out.buffer().len();
            sink.write_frame(&solid(w, h, rgb)).unwrap();
            let bytes = sink.into_inner().unwrap();
            let frame = &bytes[header_len..];
            assert_eq!(&frame[..6], b"FRAME\n");
            let planes = &frame[6..];
            assert_eq!(planes.len(), 8 + 2 + 2);
            assert_eq!(&planes[..8], &[y; 8], "Y of {rgb:?}");
            assert_eq!(&planes[8..10], &[u; 2], "U of {rgb:?}");
            assert_eq!(&planes[10..], &[v; 2], "V of {rgb:?}");
        }
    }

    /// Chroma of a 2x2 block is the mean of its pixels: half black, half white -> neutral,
    /// while luma keeps each pixel.
    #[test]
    fn y4m_chroma_subsampling() {
        let mut sink = Y4mSink::new(Vec::new(), "mem", 2, 2, 16.0).unwrap();
        let header_len = sink.out.buffer().len();
        let rgb = [255, 0, 0, 0, 0, 255, 0, 0, 255, 255, 0, 0];
        sink.write_frame(&rgb).unwrap();
        let bytes = sink.into_inner().unwrap();
        // red/blue Cb mean: (90.203 + 240) / 2 = 165.1 -> 165; Cr: (240 + 109.786) / 2 = 174.9 -> 175
        assert_eq!(&bytes[header_len + 6..], &[81, 41, 41, 81, 165, 175]);
    }

    #[test]
    fn y4m_rejects_odd_size_and_bad_frames() {
        let err = Y4mSink::new(Vec::new(), "odd.y4m", 3, 2, 16.0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("3x2"), "{err}");
        let mut sink = Y4mSink::new(Vec::new(), "mem", 2, 2, 16.0).unwrap();
        let err = sink.write_frame(&[0; 11]).unwrap_err().to_string();
        assert!(
            err.contains("12 bytes") && err.contains("11 bytes"),
            "{err}"
        );
    }

    #[test]
    fn png_round_trip() {
        let dir = scratch("png");
        let (w, h) = (5, 3);
        let frames: Vec<Vec<u8>> = (0..3u8)
            .map(|k| {
                (0..w * h * 3)
                    .map(|i| (i as u8).wrapping_mul(17).wrapping_add(k))
                    .collect()
            })
            .collect();
        let spec = format!("{}/", dir.join("seq").display());
        let mut sink = open_sink(&spec, w, h, 16.0).unwrap();
        for f in &frames {
            sink.write_frame(f).unwrap();
        }
        sink.finish().unwrap();
        for (k, expected) in frames.iter().enumerate() {
            let path = dir.join("seq").join(format!("frame_{k:06}.png"));
            let file = std::io::BufReader::new(File::open(&path).unwrap());
            let mut reader = png::Decoder::new(file).read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (w as u32, h as u32));
            assert_eq!(info.color_type, png::ColorType::Rgb);
            assert_eq!(&buf[..info.buffer_size()], expected.as_slice(), "frame {k}");
        }
        assert!(!dir.join("seq").join("frame_000003.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_patterns() {
        let dir = scratch("pattern");
        let d = dir.display();
        let star = PngSequence::with_pattern(&format!("{d}/a/shot_*.png"), 2, 2).unwrap();
        assert_eq!(star.path_of(7), dir.join("a/shot_000007.png"));
        assert!(dir.join("a").is_dir());
        let plain = PngSequence::with_pattern(&format!("{d}/clip.png"), 2, 2).unwrap();
        assert_eq!(plain.path_of(12), dir.join("clip_000012.png"));
        // An existing directory without a trailing slash is a PNG directory too.
        let mut sink = open_sink(&d.to_string(), 2, 2, 16.0).unwrap();
        sink.write_frame(&[9; 12]).unwrap();
        assert!(dir.join("frame_000000.png").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_sink_length() {
        let mut sink = RawRgbSink::new(Vec::new(), "mem", 4, 2);
        for k in 0..3u8 {
            sink.write_frame(&solid(4, 2, [k, 2 * k, 3 * k])).unwrap();
        }
        assert!(sink.write_frame(&[0; 23]).is_err());
        sink.finish().unwrap();
        let bytes = sink.into_inner().unwrap();
        assert_eq!(bytes.len(), 3 * 4 * 2 * 3);
        assert_eq!(&bytes[24..27], &[1, 2, 3]);
    }

    #[test]
    fn open_sink_errors() {
        let err = open_sink("movie.mp4", 4, 4, 16.0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("movie.mp4") && err.contains(".y4m") && err.contains(".png"),
            "{err}"
        );
        let err = open_sink("/nonexistent-dir-streamdit/x.y4m", 4, 4, 16.0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent-dir-streamdit/x.y4m"), "{err}");
    }
}
