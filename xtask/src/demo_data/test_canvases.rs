//! Two tiny demo canvases for the converters' tests (`coco_instances`, `coco_panoptic`).

use std::path::Path;

/// Canvas height and width.
pub(crate) const HW: (usize, usize) = (8, 10);

/// Writes canvases `00000.png` and `00001.png` of the `val` split under `data` (`images/`,
/// `annotations/` class maps, `instances/` u16 instance ids): in canvas `c`, item 1 (class
/// `3 + c`, 12 pixels) at rows 1..4, item 2 hidden under item 3 (class 9, 32 pixels) at rows
/// 4..8, background 0 elsewhere. Returns the class maps.
pub(crate) fn write_two_canvases(data: &Path) -> Vec<Vec<u8>> {
    let (h, w) = HW;
    for d in ["images", "annotations", "instances"] {
        std::fs::create_dir_all(data.join(d).join("val")).unwrap();
    }
    let mut sems = Vec::new();
    for c in 0..2u16 {
        let (mut sem, mut inst) = (vec![0u8; h * w], vec![0u16; h * w]);
        for y in 0..h {
            for x in 0..w {
                let (k, cls) = match (y, x) {
                    (1..=3, 2..=5) => (1, 3 + c as u8),
                    (4..=7, 1..=8) => (3, 9),
                    _ => continue,
                };
                sem[y * w + x] = cls;
                inst[y * w + x] = k;
            }
        }
        let name = format!("{c:05}.png");
        image::RgbImage::new(w as u32, h as u32)
            .save(data.join("images/val").join(&name))
            .unwrap();
        image::GrayImage::from_raw(w as u32, h as u32, sem.clone())
            .unwrap()
            .save(data.join("annotations/val").join(&name))
            .unwrap();
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w as u32, h as u32, inst)
            .unwrap()
            .save(data.join("instances/val").join(&name))
            .unwrap();
        sems.push(sem);
    }
    sems
}
