//! A small line-plot writer for training curves (no font or plotting dependency): panels of
//! series drawn with Bresenham lines into an RGB image, axes with tick marks, and labels in a
//! built-in 3x5 pixel font scaled up. Written as PNG with the `image` crate.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::{TrainError, TrainResult};

/// One series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: [u8; 3],
    /// Also mark each point with a small square.
    pub markers: bool,
}

/// One panel: a title, a y range (`None`: the data's), and series.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title drawn at the panel's top left (letters, digits, `.`, `-`, `/`, `%`, space).
    pub title: String,
    /// Fixed y range.
    pub y_range: Option<(f64, f64)>,
    /// The series.
    pub series: Vec<Series>,
}

const FONT_W: usize = 3;

/// 3x5 glyphs, one row per `u8` (bits 2..0 = left..right).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '/' => [1, 1, 2, 4, 4],
        '%' => [5, 1, 2, 4, 5],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [7, 4, 4, 4, 7],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [7, 4, 5, 5, 7],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 7],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [7, 5, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'q' => [7, 5, 5, 7, 1],
        'r' => [6, 5, 6, 5, 5],
        's' => [7, 4, 7, 1, 7],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        _ => [0; 5],
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, color: [u8; 3]) {
    for (k, c) in s.chars().enumerate() {
        let g = glyph(c);
        let x0 = x + k as i64 * (FONT_W as i64 + 1) * scale;
        for (r, bits) in g.iter().enumerate() {
            for col in 0..FONT_W {
                if bits >> (FONT_W - 1 - col) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                x0 + col as i64 * scale + dx,
                                y + r as i64 * scale + dy,
                                color,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws the panels stacked vertically over a shared x axis (`x_label` under the last) and
/// returns the image.
pub fn render(panels: &[Panel], x_label: &str, width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let (left, right, top_pad, bottom) = (70i64, 20i64, 24i64, 40i64);
    let n = panels.len().max(1) as i64;
    let ph = (height as i64 - bottom) / n;
    let xmax = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))
        .fold(0f64, f64::max)
        .max(1.0);
    let grey = [200, 200, 200];
    let black = [0, 0, 0];
    for (pi, p) in panels.iter().enumerate() {
        let y0 = pi as i64 * ph + top_pad;
        let y1 = (pi as i64 + 1) * ph - 10;
        let (x0, x1) = (left, width as i64 - right);
        let (mut lo, mut hi) = p.y_range.unwrap_or_else(|| {
            let ys = p.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
            let (a, b) = ys
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
            if a.is_finite() {
                (a.min(0.0), b)
            } else {
                (0.0, 1.0)
            }
        });
        if hi <= lo {
            hi = lo + 1.0;
        }
        if !lo.is_finite() {
            lo = 0.0;
        }
        let px = |x: f64| x0 + ((x / xmax) * (x1 - x0) as f64).round() as i64;
        let py = |y: f64| y1 - (((y - lo) / (hi - lo)) * (y1 - y0) as f64).round() as i64;
        // Grid, ticks and labels: 5 horizontal lines.
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let y = py(v);
            line(&mut img, (x0, y), (x1, y), grey);
            let s = fmt_tick(v);
            text(&mut img, x0 - 8 - 8 * s.len() as i64, y - 5, &s, 2, black);
        }
        for k in 0..=5 {
            let x = px(xmax * k as f64 / 5.0);
            line(&mut img, (x, y0), (x, y1), grey);
            if pi + 1 == panels.len() {
                let s = format!("{:.0}", xmax * k as f64 / 5.0);
                text(&mut img, x - 4 * s.len() as i64, y1 + 8, &s, 2, black);
            }
        }
        line(&mut img, (x0, y0), (x0, y1), black);
        line(&mut img, (x0, y1), (x1, y1), black);
        text(&mut img, x0 + 8, y0 - 16, &p.title, 2, black);
        for s in &p.series {
            let pts: Vec<(i64, i64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| (px(x), py(y.clamp(lo, hi))))
                .collect();
            for w in pts.windows(2) {
                line(&mut img, w[0], w[1], s.color);
            }
            if s.markers {
                for &(x, y) in &pts {
                    for dy in -2..=2 {
                        for dx in -2..=2 {
                            put(&mut img, x + dx, y + dy, s.color);
                        }
                    }
                }
            }
        }
    }
    let lw = 8 * x_label.len() as i64;
    text(
        &mut img,
        (width as i64 - lw) / 2,
        height as i64 - 16,
        x_label,
        2,
        black,
    );
    img
}

/// The training curve: the logged loss (grey) with a moving average (blue) above, the
/// validation mIoU in percent (red, with markers) below.
pub fn training_curve(loss: &[(f64, f64)], miou: &[(f64, f64)]) -> RgbImage {
    let k = (loss.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = (0..loss.len())
        .map(|i| {
            let a = i.saturating_sub(k);
            let b = (i + k + 1).min(loss.len());
            let m = loss[a..b].iter().map(|p| p.1).sum::<f64>() / (b - a) as f64;
            (loss[i].0, m)
        })
        .collect();
    let top = miou.iter().map(|p| p.1).fold(0f64, f64::max);
    render(
        &[
            Panel {
                title: "training loss".into(),
                y_range: None,
                series: vec![
                    Series {
                        points: loss.to_vec(),
                        color: [190, 190, 190],
                        markers: false,
                    },
                    Series {
                        points: smooth,
                        color: [31, 119, 180],
                        markers: false,
                    },
                ],
            },
            Panel {
                title: "val miou (%)".into(),
                y_range: Some((0.0, (top * 100.0 / 10.0).ceil().max(1.0) * 10.0)),
                series: vec![Series {
                    points: miou.iter().map(|&(x, y)| (x, 100.0 * y)).collect(),
                    color: [214, 39, 40],
                    markers: true,
                }],
            },
        ],
        "iteration",
        900,
        600,
    )
}

/// Writes an image as PNG, atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> TrainResult<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    crate::checkpoint::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_something() {
        let loss: Vec<(f64, f64)> = (1..100).map(|i| (i as f64, 2.0 / i as f64)).collect();
        let img = training_curve(&loss, &[(50.0, 0.3), (99.0, 0.5)]);
        let red = img.pixels().filter(|p| p.0 == [214, 39, 40]).count();
        let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        assert!(red > 20 && blue > 100, "{red} {blue}");
    }
}
