//! Pascal VOC (`VocDataset`): palette-index PNGs, list files and the aug set.

use segkit_data::{SegDataset, VocDataset};

use crate::{
    assert_bad_file, labels, tmp, wide, write_grey, write_palette, write_rgb, TestResult, H, W,
};

#[test]
fn voc_reads_palette_indices_and_the_aug_set() -> TestResult {
    let dir = tmp()?;
    let root = dir.path().join("VOC2012");
    let l1 = labels(|x, y| match (x, y) {
        (0, _) | (_, 0) => 255,
        _ => ((x * y) % 21) as u8,
    });
    write_rgb(&root.join("JPEGImages/2007_000032.jpg"), 1)?;
    write_palette(&root.join("SegmentationClass/2007_000032.png"), &l1, false)?;
    write_rgb(&root.join("JPEGImages/2007_000039.jpg"), 2)?;
    let l2 = labels(|x, _| (x % 16) as u8);
    write_palette(&root.join("SegmentationClass/2007_000039.png"), &l2, true)?;
    write_rgb(&root.join("JPEGImages/2008_000002.jpg"), 3)?;
    let l3 = labels(|x, y| ((x + 2 * y) % 21) as u8);
    write_grey(
        &root.join("SegmentationClassAug/2008_000002.png"),
        &l3,
        W,
        H,
    )?;
    let sets = root.join("ImageSets/Segmentation");
    std::fs::create_dir_all(&sets)?;
    std::fs::write(sets.join("train.txt"), "2007_000039\n2007_000032\n\n")?;
    std::fs::write(sets.join("aug.txt"), "2008_000002\n")?;

    let train = VocDataset::new(&root, "train")?;
    assert_eq!(train.len(), 2);
    assert_eq!(train.info().classes[15], "person");
    assert_eq!(train.info().palette[15], [192, 128, 128]);
    let s = train.get(0)?;
    assert!(s.path.ends_with("2007_000039.jpg"), "list order");
    assert_eq!(s.semantic, Some(wide(&l2)), "4-bit palette indices");
    assert_eq!(
        train.get(1)?.semantic,
        Some(wide(&l1)),
        "palette indices, not colours"
    );

    let all = VocDataset::train_aug(&root)?;
    assert_eq!(all.len(), 3);
    assert_eq!(all.get(2)?.semantic, Some(wide(&l3)));
    assert_eq!(all.get(1)?.semantic, Some(wide(&l1)));
    assert!(all.get(3).is_err());

    // Errors: a listed image missing, a missing list, a missing mask.
    std::fs::write(sets.join("val.txt"), "2007_000032\n2009_999999\n")?;
    assert_bad_file(VocDataset::new(&root, "val"), "2009_999999.jpg");
    assert_bad_file(VocDataset::new(&root, "trainval"), "trainval.txt");
    assert_bad_file(
        VocDataset::aug(&root, "train"),
        "SegmentationClassAug/2007_000039.png",
    );
    Ok(())
}
