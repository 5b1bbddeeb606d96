//! Edges for Gated-SCNN (Takikawa et al., ICCV 2019; nv-tlabs/GSCNN): the Canny map its shape
//! stream fuses ([`canny`]: `cv2.Canny` in plain Rust, and the two inputs it can be fed,
//! [`CannyInput`]) and the binary edge ground truth its edge loss trains against ([`gt`]:
//! one-hot, distance transform, radius 2).
//!
//! ```
//! use segkit_data::edges::{canny, edge_target};
//! # fn main() -> segkit_data::Result<()> {
//! // A 6 x 6 RGB image, dark left half and bright right half.
//! let img: Vec<u8> = (0..6 * 6 * 3).map(|i| if (i / 3) % 6 >= 3 { 250 } else { 10 }).collect();
//! let e = canny(&img, 6, 6, 10.0, 100.0)?;
//! assert_eq!(&e[..6], &[0, 0, 255, 0, 0, 0]);
//! // Two classes side by side: the edge band is 2 px on either side of the boundary.
//! let labels: Vec<u8> = (0..6 * 6).map(|i| if i % 6 >= 3 { 2 } else { 1 }).collect();
//! let gt = edge_target(&labels, 6, 6, 19, 2.0)?;
//! assert!(gt.iter().all(|&v| v == 1)); // (every pixel is also within 2 px of the border)
//! # Ok(())
//! # }
//! ```

pub mod canny;
pub mod gt;

pub use canny::{
    canny, canny_channels, image8bit_input, numpy_cast_u8, released_input, CannyInput,
};
pub use gt::{edge_target, EdgeTargetConfig};
