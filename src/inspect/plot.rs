//! PNG figures of an [`Inspection`]: one attention-map grid per block and a
//! logit-lens heat map (cargo feature `plot`, on by default).
//!
//! Drawn with `plotters`' bitmap backend into an RGB buffer, written by the
//! `png` crate. Text is DejaVu Sans, embedded in the binary by the `dejavu`
//! crate and rasterised by `ab_glyph`, so nothing is read from the system at
//! run time. Colours run along the viridis scale: dark purple for 0, yellow
//! for 1; masked cells (a key after the query) are light grey.
//!
//! ## Sizes
//!
//! The sizes are fixed by the model and the prompt, not by the data, so they
//! are known before drawing ([`attention_grid_size`], [`logit_lens_size`]):
//!
//! - **attention grid** of a block: one panel per head, `cols = ⌈√n_head⌉`
//!   panels across and `rows = ⌈n_head / cols⌉` down (GPT-2 small: 4 × 3);
//!   each panel is 400 × 422 px (a 288 px square map, 96 px for the token
//!   labels on its left and below, 22 px for its title, 16 px gap), plus a
//!   40 px title above all and an 80 px colour bar on the right:
//!   **`(400·cols + 80) × (40 + 422·rows)`** px. The golden model's 4 heads
//!   give 880 × 884. Row `q` of a map is query position `q`, column `k` key
//!   position `k`; above the diagonal is the causal mask (weight 0). When the
//!   prompt has more positions than the map has pixels, each pixel shows the
//!   largest weight it covers, so a sharp attention never disappears.
//! - **logit lens**: one row per residual snapshot (`embed` at the top, then
//!   `h.0`, ... down), one 88 × 26 px column per position (at most the last
//!   [`LENS_MAX_POSITIONS`]), each cell coloured by the probability of the
//!   lens's top token and labelled with it; 64 px of layer names on the left,
//!   40 px of title, 56 px of input tokens below, 80 px of colour bar:
//!   **`(64 + 88·P + 80) × (40 + 26·L + 56)`** px for `P` positions and
//!   `L = n_layer + 1` rows. The golden model on a 5-token prompt: 584 × 200.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::{anyhow, ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::patching::Patching;
use super::{token_label, Inspection};

/// The logit-lens figure shows at most this many positions (the last ones).
pub const LENS_MAX_POSITIONS: usize = 32;

// Attention grid geometry, in pixels.
const HEAT: u32 = 288;
const LABEL: u32 = 96;
const PANEL_TITLE: u32 = 22;
const GAP: u32 = 16;
const PANEL_W: u32 = LABEL + HEAT + GAP;
const PANEL_H: u32 = PANEL_TITLE + HEAT + LABEL + GAP;
const TITLE: u32 = 40;
const COLORBAR: u32 = 80;

// Logit-lens geometry, in pixels.
const CELL_W: u32 = 88;
const CELL_H: u32 = 26;
const LENS_LEFT: u32 = 64;
const LENS_BOTTOM: u32 = 56;

/// Panels across and down for `n_head` heads.
fn grid(n_head: usize) -> (u32, u32) {
    let cols = (n_head as f64).sqrt().ceil().max(1.0) as u32;
    let rows = (n_head as u32).div_ceil(cols).max(1);
    (cols, rows)
}

/// Width and height in pixels of a block's attention grid for `n_head` heads:
/// `(400·cols + 80, 40 + 422·rows)`, `cols = ⌈√n_head⌉`, `rows = ⌈n_head/cols⌉`.
pub fn attention_grid_size(n_head: usize) -> (u32, u32) {
    let (cols, rows) = grid(n_head);
    (PANEL_W * cols + COLORBAR, TITLE + PANEL_H * rows)
}

/// Width and height in pixels of the logit-lens figure for `n_rows` residual
/// snapshots (`n_layer + 1`) and a prompt of `n_positions` tokens:
/// `(64 + 88·P + 80, 40 + 26·n_rows + 56)`, `P = min(n_positions, LENS_MAX_POSITIONS)`.
pub fn logit_lens_size(n_rows: usize, n_positions: usize) -> (u32, u32) {
    let p = n_positions.min(LENS_MAX_POSITIONS) as u32;
    (
        LENS_LEFT + CELL_W * p + COLORBAR,
        TITLE + CELL_H * n_rows as u32 + LENS_BOTTOM,
    )
}

/// Write every figure of `inspection` into `dir` (created if missing):
/// `attention-layer{i}.png` for each block and `logit-lens.png`. Returns the
/// paths written.
pub fn write_all(inspection: &Inspection, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for layer in 0..inspection.attention.len() {
        let path = dir.join(format!("attention-layer{layer}.png"));
        attention_png(inspection, layer, &path)?;
        written.push(path);
    }
    let path = dir.join("logit-lens.png");
    logit_lens_png(inspection, &path)?;
    written.push(path);
    Ok(written)
}

/// An RGB image: `width × height` pixels, 3 bytes each, row by row.
struct Rgb {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Rgb {
    fn new((width, height): (u32, u32)) -> Self {
        Rgb {
            width,
            height,
            pixels: vec![255; (width * height * 3) as usize],
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer
            .finish()
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Draw the attention maps of block `layer`, one panel per head, into a PNG at
/// `path`; returns its size, [`attention_grid_size`].
pub fn attention_png(inspection: &Inspection, layer: usize, path: &Path) -> Result<(u32, u32)> {
    ensure!(
        layer < inspection.attention.len(),
        "block {layer} does not exist: the model has {} blocks",
        inspection.attention.len()
    );
    let n_head = inspection.attention[layer].probs.dim().0; // [n_head, T, T]
    let size = attention_grid_size(n_head);
    let mut image = Rgb::new(size);
    draw_attention(inspection, layer, &mut image).map_err(|e| anyhow!("drawing failed: {e}"))?;
    image.save(path)?;
    Ok(size)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The colour of a masked cell (a key after the query).
const MASKED: RGBColor = RGBColor(232, 232, 232);

fn draw_attention(inspection: &Inspection, layer: usize, image: &mut Rgb) -> DrawResult {
    let size = (image.width, image.height);
    let probs = &inspection.attention[layer].probs;
    let (n_head, t, _) = probs.dim();
    let (cols, _) = grid(n_head);
    let root = BitMapBackend::with_buffer(&mut image.pixels, size).into_drawing_area();
    let title = format!(
        "h.{layer}.attn.probs: {n_head} heads; row = query position, column = key position, \
         colour = weight"
    );
    let (tx, ty) = (GAP as i32, (TITLE / 2) as i32);
    text(&root, &title, (tx, ty), 15.0, Align::Start, BLACK)?;

    let cell = HEAT as f64 / t as f64;
    let font = (cell * 0.8).clamp(8.0, 12.0) as f32;
    let step = ((f64::from(font) * 1.15) / cell).ceil().max(1.0) as usize; // label every step-th token
    let labels: Vec<String> = inspection
        .tokens
        .iter()
        .map(|s| token_label(s, 12))
        .collect();

    for (h, head) in probs.outer_iter().enumerate() {
        let (col, row) = (h as u32 % cols, h as u32 / cols);
        let x0 = (col * PANEL_W + LABEL) as i32;
        let y0 = (TITLE + row * PANEL_H + PANEL_TITLE) as i32;
        let summary = &inspection.attention[layer].heads[h];
        let caption = format!("head {h}   entropy {:.2} nats", summary.entropy);
        text(
            &root,
            &caption,
            (x0, y0 - PANEL_TITLE as i32 / 2),
            12.0,
            Align::Start,
            BLACK,
        )?;
        // The map, pixel by pixel: each pixel shows the largest weight among
        // the visible cells it covers (one cell when the map is larger than T).
        for py in 0..HEAT {
            let (q0, q1) = covered(py, t);
            for px in 0..HEAT {
                let (k0, k1) = covered(px, t);
                let mut w: Option<f32> = None;
                for q in q0..q1 {
                    for k in k0..k1.min(q + 1) {
                        w = Some(w.map_or(head[[q, k]], |m| m.max(head[[q, k]])));
                    }
                }
                let colour = w.map_or(MASKED, viridis);
                root.draw_pixel((x0 + px as i32, y0 + py as i32), &colour)?;
            }
        }
        // The weights themselves when the cells are large enough to hold them.
        if cell >= 30.0 {
            for ((q, k), &w) in head.indexed_iter().filter(|((q, k), _)| k <= q) {
                let centre = (
                    x0 + ((k as f64 + 0.5) * cell) as i32,
                    y0 + ((q as f64 + 0.5) * cell) as i32,
                );
                let colour = if w > 0.6 { BLACK } else { WHITE };
                text(
                    &root,
                    &format!("{w:.2}"),
                    centre,
                    11.0,
                    Align::Middle,
                    colour,
                )?;
            }
        }
        root.draw(&Rectangle::new(
            [(x0 - 1, y0 - 1), (x0 + HEAT as i32, y0 + HEAT as i32)],
            BLACK.stroke_width(1),
        ))?;
        // Token labels: queries on the left, keys below (reading upwards).
        for (pos, label) in labels.iter().enumerate().step_by(step) {
            let mid = ((pos as f64 + 0.5) * cell) as i32;
            text(&root, label, (x0 - 5, y0 + mid), font, Align::End, BLACK)?;
            let at = (x0 + mid, y0 + HEAT as i32 + 5);
            text_upwards(&root, label, at, font, BLACK)?;
        }
    }
    colorbar(&root, size, "weight")?;
    root.present()?;
    Ok(())
}

/// The rows (or columns) of a `t`-long axis that pixel `p` of a `HEAT`-pixel
/// map covers: `[start, end)`, never empty.
fn covered(p: u32, t: usize) -> (usize, usize) {
    let start = p as usize * t / HEAT as usize;
    let end = ((p as usize + 1) * t / HEAT as usize).max(start + 1);
    (start, end.min(t))
}

/// Draw the logit lens as a heat map into a PNG at `path`: one row per
/// residual snapshot, one column per position (the last
/// [`LENS_MAX_POSITIONS`]), colour = probability of the top token, labelled
/// with it. Returns its size, [`logit_lens_size`].
pub fn logit_lens_png(inspection: &Inspection, path: &Path) -> Result<(u32, u32)> {
    let size = logit_lens_size(inspection.layers.len(), inspection.len());
    let mut image = Rgb::new(size);
    draw_logit_lens(inspection, &mut image).map_err(|e| anyhow!("drawing failed: {e}"))?;
    image.save(path)?;
    Ok(size)
}

fn draw_logit_lens(inspection: &Inspection, image: &mut Rgb) -> DrawResult {
    let size = (image.width, image.height);
    let root = BitMapBackend::with_buffer(&mut image.pixels, size).into_drawing_area();
    let t = inspection.len();
    let first = t.saturating_sub(LENS_MAX_POSITIONS);
    let shown = if first > 0 {
        format!(" (last {} of {t} positions)", t - first)
    } else {
        String::new()
    };
    let title = format!("logit lens: top token of softmax(ln_f(x) · Wᵀ) at each layer{shown}");
    text(
        &root,
        &title,
        (GAP as i32, (TITLE / 2) as i32),
        15.0,
        Align::Start,
        BLACK,
    )?;
    let top = TITLE as i32;
    let (cw, ch) = (CELL_W as i32, CELL_H as i32);
    for (row, layer) in inspection.layers.iter().enumerate() {
        let y = top + row as i32 * ch;
        let at = (LENS_LEFT as i32 - 6, y + ch / 2);
        text(&root, &layer.name, at, 12.0, Align::End, BLACK)?;
        for (col, pos) in (first..t).enumerate() {
            let x = LENS_LEFT as i32 + col as i32 * cw;
            let best = &layer.top[pos][0];
            root.draw(&Rectangle::new(
                [(x, y), (x + cw, y + ch)],
                viridis(best.prob).filled(),
            ))?;
            let colour = if best.prob > 0.6 { BLACK } else { WHITE };
            let label = token_label(&best.text, 11);
            text(
                &root,
                &label,
                (x + cw / 2, y + ch / 2),
                12.0,
                Align::Middle,
                colour,
            )?;
        }
    }
    let bottom = top + inspection.layers.len() as i32 * ch;
    for (col, pos) in (first..t).enumerate() {
        let x = LENS_LEFT as i32 + col as i32 * cw + cw / 2;
        let label = token_label(&inspection.tokens[pos], 11);
        text(&root, &label, (x, bottom + 12), 12.0, Align::Middle, BLACK)?;
    }
    let caption = "input token at each position (the lens predicts the one after it)";
    text(
        &root,
        caption,
        (LENS_LEFT as i32, bottom + 38),
        12.0,
        Align::Start,
        BLACK,
    )?;
    colorbar(&root, size, "p(top)")?;
    root.present()?;
    Ok(())
}

// Patching heat-map geometry, in pixels (cells as the logit lens's, a taller title).
const PATCH_TITLE: u32 = 56;
const PATCH_CELL_H: u32 = 30;
const PATCH_BOTTOM: u32 = 64;

/// Width and height in pixels of a patching heat map of `rows` blocks and
/// `cols` positions or heads: `(64 + 88·cols + 80, 56 + 30·rows + 64)`, at
/// least 560 wide (the title's room). The bundled model's 6 blocks and 7
/// positions: 760 × 300.
pub fn patching_size(rows: usize, cols: usize) -> (u32, u32) {
    (
        (LENS_LEFT + CELL_W * cols as u32 + COLORBAR).max(560),
        PATCH_TITLE + PATCH_CELL_H * rows as u32 + PATCH_BOTTOM,
    )
}

/// Draw both sweeps of a [`Patching`] into `dir` (created if missing):
/// `patch-resid-pre.png` (blocks × positions, labelled with the tokens) and
/// `patch-head-out.png` (blocks × heads). Each cell is labelled with the
/// metric and coloured by how much of the clean metric it restores,
/// [`Patching::restored`]: white 0 (the corrupted run's), red 1 (the clean
/// run's), blue −1. Returns the paths written.
pub fn patching_pngs(patching: &Patching, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let clean: Vec<String> = patching.tokens.iter().map(|t| token_label(t, 11)).collect();
    let corrupt: Vec<String> = (patching.tokens.iter().zip(&patching.corrupt_tokens))
        .map(|(a, b)| {
            if a == b {
                String::new()
            } else {
                token_label(b, 11)
            }
        })
        .collect();
    let heads: Vec<String> = (0..patching.head_out.ncols())
        .map(|h| format!("head {h}"))
        .collect();
    let blank = vec![String::new(); heads.len()];
    let figures = [
        (
            "patch-resid-pre.png",
            "resid_pre: block l's input at position p from the clean run",
            &patching.resid_pre,
            (&clean, &corrupt),
            "position (clean token; below it the corrupted one where they differ)",
        ),
        (
            "patch-head-out.png",
            "head_out: head h of block l, all positions, from the clean run",
            &patching.head_out,
            (&heads, &blank),
            "head",
        ),
    ];
    let mut written = Vec::new();
    for (file, title, values, columns, caption) in figures {
        let path = dir.join(file);
        let size = patching_size(values.nrows(), values.ncols());
        let mut image = Rgb::new(size);
        let map = HeatMap {
            title,
            values,
            columns,
            caption,
        };
        draw_patching(patching, &map, &mut image).map_err(|e| anyhow!("drawing failed: {e}"))?;
        image.save(&path)?;
        written.push(path);
    }
    Ok(written)
}

/// One sweep to draw: its values `[n_layer, columns]` and the column labels
/// (two lines each).
struct HeatMap<'a> {
    title: &'a str,
    values: &'a ndarray::Array2<f32>,
    columns: (&'a Vec<String>, &'a Vec<String>),
    caption: &'a str,
}

fn draw_patching(patching: &Patching, map: &HeatMap<'_>, image: &mut Rgb) -> DrawResult {
    let size = (image.width, image.height);
    let root = BitMapBackend::with_buffer(&mut image.pixels, size).into_drawing_area();
    let x0 = GAP as i32;
    text(&root, map.title, (x0, 16), 15.0, Align::Start, BLACK)?;
    let metric = format!(
        "metric logit({}) − logit({}) at the last position: clean {:.2}, corrupted {:.2}",
        token_label(&patching.answer_text, 14),
        token_label(&patching.wrong_text, 14),
        patching.clean,
        patching.corrupt
    );
    text(&root, &metric, (x0, 38), 12.0, Align::Start, BLACK)?;
    let (cw, ch, top) = (CELL_W as i32, PATCH_CELL_H as i32, PATCH_TITLE as i32);
    for (l, row) in map.values.rows().into_iter().enumerate() {
        let y = top + l as i32 * ch;
        let label = format!("h.{l}");
        text(
            &root,
            &label,
            (LENS_LEFT as i32 - 6, y + ch / 2),
            12.0,
            Align::End,
            BLACK,
        )?;
        for (col, &m) in row.iter().enumerate() {
            let x = LENS_LEFT as i32 + col as i32 * cw;
            let restored = patching.restored(m);
            let fill = diverging(restored);
            root.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], fill.filled()))?;
            let ink = if restored.abs() > 0.6 { WHITE } else { BLACK };
            let at = (x + cw / 2, y + ch / 2);
            text(&root, &format!("{m:.2}"), at, 12.0, Align::Middle, ink)?;
        }
    }
    let bottom = top + map.values.nrows() as i32 * ch;
    root.draw(&Rectangle::new(
        [
            (LENS_LEFT as i32 - 1, top - 1),
            (LENS_LEFT as i32 + map.values.ncols() as i32 * cw, bottom),
        ],
        BLACK.stroke_width(1),
    ))?;
    let (first, second) = map.columns;
    for (col, (a, b)) in first.iter().zip(second).enumerate() {
        let x = LENS_LEFT as i32 + col as i32 * cw + cw / 2;
        text(&root, a, (x, bottom + 11), 12.0, Align::Middle, BLACK)?;
        text(
            &root,
            b,
            (x, bottom + 27),
            12.0,
            Align::Middle,
            RGBColor(178, 24, 43),
        )?;
    }
    text(
        &root,
        map.caption,
        (LENS_LEFT as i32, bottom + 48),
        12.0,
        Align::Start,
        BLACK,
    )?;
    colorbar_of(&root, size, "restored", diverging, (-1.0, 1.0))?;
    root.present()?;
    Ok(())
}

/// A diverging colour for `v` in `[−1, 1]` (clamped): blue at −1, near-white
/// at 0, red at 1 (the ends of ColorBrewer's RdBu).
pub fn diverging(v: f32) -> RGBColor {
    let v = if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) };
    let (white, end) = (
        (247.0, 247.0, 247.0),
        if v >= 0.0 {
            (178.0, 24.0, 43.0)
        } else {
            (33.0, 102.0, 172.0)
        },
    );
    let f = v.abs();
    let lerp = |a: f32, b: f32| (a + (b - a) * f).round() as u8;
    RGBColor(
        lerp(white.0, end.0),
        lerp(white.1, end.1),
        lerp(white.2, end.2),
    )
}

/// A vertical viridis bar from 0 (bottom) to 1 (top) along the right edge.
fn colorbar(root: &Area<'_>, size: (u32, u32), caption: &str) -> DrawResult {
    colorbar_of(root, size, caption, viridis, (0.0, 1.0))
}

/// A vertical bar of `colour` from `lo` (bottom) to `hi` (top) along the right edge.
fn colorbar_of(
    root: &Area<'_>,
    (width, height): (u32, u32),
    caption: &str,
    colour: fn(f32) -> RGBColor,
    (lo, hi): (f32, f32),
) -> DrawResult {
    let x = (width - COLORBAR + 14) as i32;
    let top = TITLE as i32 + 14;
    let bar_h = (height as i32 - top - 24).clamp(20, 240);
    for dy in 0..bar_h {
        let v = hi - (hi - lo) * dy as f32 / (bar_h - 1).max(1) as f32;
        root.draw(&Rectangle::new(
            [(x, top + dy), (x + 14, top + dy + 1)],
            colour(v).filled(),
        ))?;
    }
    let mid = (lo + hi) / 2.0;
    for (v, y) in [(hi, top), (mid, top + bar_h / 2), (lo, top + bar_h - 1)] {
        text(
            root,
            &format!("{v:.1}"),
            (x + 19, y),
            11.0,
            Align::Start,
            BLACK,
        )?;
    }
    text(root, caption, (x - 6, top - 9), 11.0, Align::Start, BLACK)?;
    Ok(())
}

/// Where a line of text sits relative to its anchor point, along the text.
#[derive(Clone, Copy)]
enum Align {
    /// The text starts at the anchor.
    Start,
    /// The text is centred on the anchor.
    Middle,
    /// The text ends at the anchor.
    End,
}

/// DejaVu Sans, parsed once.
fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(dejavu::sans::regular()).expect("the embedded DejaVu Sans parses")
    })
}

/// Horizontal text of `size` px, vertically centred on `at`.
fn text(
    root: &Area<'_>,
    s: &str,
    at: (i32, i32),
    size: f32,
    align: Align,
    colour: RGBColor,
) -> DrawResult {
    draw_glyphs(root, s, size, align, colour, |u, v| (at.0 + u, at.1 + v))
}

/// Text reading upwards (rotated 90° anticlockwise), ending at `at` and
/// centred on it across: a column's label below a map.
fn text_upwards(
    root: &Area<'_>,
    s: &str,
    at: (i32, i32),
    size: f32,
    colour: RGBColor,
) -> DrawResult {
    draw_glyphs(root, s, size, Align::End, colour, |u, v| {
        (at.0 + v, at.1 - u)
    })
}

/// Lay out `s` on a baseline in the text's own frame (`u` along the text, `v`
/// down, the anchor at `(0, 0)`: `u` set by `align`, `v` at the middle of the
/// font's ascent and descent), rasterise each glyph, and blend its coverage
/// into the image at `to_image(u, v)`.
fn draw_glyphs(
    root: &Area<'_>,
    s: &str,
    size: f32,
    align: Align,
    colour: RGBColor,
    to_image: impl Fn(i32, i32) -> (i32, i32),
) -> DrawResult {
    let font = font().as_scaled(PxScale::from(size));
    let mut glyphs = Vec::new();
    let mut pen = 0.0f32;
    let mut previous = None;
    for c in s.chars() {
        let id = font.glyph_id(c);
        if let Some(previous) = previous {
            pen += font.kern(previous, id);
        }
        glyphs.push(id.with_scale_and_position(size, ab_glyph::point(pen, 0.0)));
        pen += font.h_advance(id);
        previous = Some(id);
    }
    let u0 = match align {
        Align::Start => 0.0,
        Align::Middle => -pen / 2.0,
        Align::End => -pen,
    };
    let v0 = (font.ascent() + font.descent()) / 2.0; // baseline below the centre line
    let RGBColor(r, g, b) = colour;
    let mut result = Ok(());
    for glyph in glyphs {
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // a space
        };
        let bounds = outline.px_bounds();
        outline.draw(|x, y, coverage| {
            let u = (u0 + bounds.min.x).round() as i32 + x as i32;
            let v = (v0 + bounds.min.y).round() as i32 + y as i32;
            if coverage > 0.0 && result.is_ok() {
                let pixel = RGBAColor(r, g, b, f64::from(coverage.min(1.0)));
                result = root.draw_pixel(to_image(u, v), &pixel);
            }
        });
    }
    Ok(result?)
}

/// The viridis colour of `v` in `[0, 1]` (clamped), interpolated between 11
/// samples of matplotlib's map.
pub fn viridis(v: f32) -> RGBColor {
    const STOPS: [(u8, u8, u8); 11] = [
        (68, 1, 84),
        (72, 36, 117),
        (65, 68, 135),
        (53, 95, 141),
        (42, 120, 142),
        (33, 145, 140),
        (34, 168, 132),
        (68, 190, 112),
        (122, 209, 81),
        (189, 223, 38),
        (253, 231, 37),
    ];
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let x = v * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let lerp = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}
