//! The QR code image `IssueLinkQr` returns: the payload as an SVG the portal can show as is.
//!
//! Built with the `qrcode` crate's parts rather than `QrCode::new`, for one reason: `QrCode::new`
//! draws the symbol under all eight mask patterns and scores each (ISO/IEC 18004 §7.8.3), which
//! was more than half of the command service's CPU under an IssueLinkQr load. Masks exist to
//! break up large uniform areas in structured data; our payload is mostly random base64, and
//! every mask decodes the same way in every reader, so one fixed mask is used. The SVG is one
//! path of horizontal runs of dark modules, with the standard 4-module quiet zone.

use std::fmt::Write as _;

use qrcode::canvas::{Canvas, MaskPattern};
use qrcode::{Color, EcLevel, QrResult};

/// Error correction level: M (15 % of codewords recoverable), `QrCode::new`'s default.
const EC_LEVEL: EcLevel = EcLevel::M;
/// Light modules around the symbol, as the standard requires.
const QUIET_ZONE: usize = 4;
/// The image's rendered size in pixels (it scales: the SVG has a `viewBox`).
const PIXELS: usize = 256;

/// The dark (`true`) and light modules of `text`'s QR symbol, row by row, and its width.
pub(crate) fn modules(text: &str) -> QrResult<(Vec<bool>, usize)> {
    let bits = qrcode::bits::encode_auto(text.as_bytes(), EC_LEVEL)?;
    let version = bits.version();
    let (data, ec) = qrcode::ec::construct_codewords(&bits.into_bytes(), version, EC_LEVEL)?;
    let mut canvas = Canvas::new(version, EC_LEVEL);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data, &ec);
    canvas.apply_mask(MaskPattern::Checkerboard);
    let dark = canvas
        .into_colors()
        .into_iter()
        .map(|color| color == Color::Dark)
        .collect();
    let width =
        usize::try_from(version.width()).map_err(|_| qrcode::types::QrError::InvalidVersion)?;
    Ok((dark, width))
}

/// `text` as a QR code in SVG.
pub(crate) fn svg(text: &str) -> QrResult<String> {
    let (dark, width) = modules(text)?;
    let size = width + 2 * QUIET_ZONE;
    let mut svg = String::with_capacity(64 * width);
    let _ = write!(
        svg,
        "<?xml version=\"1.0\" standalone=\"yes\"?>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{PIXELS}\" \
         height=\"{PIXELS}\" viewBox=\"0 0 {size} {size}\" shape-rendering=\"crispEdges\">\
         <rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/><path fill=\"#000\" d=\""
    );
    for (y, row) in dark.chunks(width).enumerate() {
        let mut x = 0;
        while x < width {
            if !row[x] {
                x += 1;
                continue;
            }
            let run = row[x..].iter().take_while(|dark| **dark).count();
            let _ = write!(
                svg,
                "M{} {}h{run}v1h-{run}z",
                x + QUIET_ZONE,
                y + QUIET_ZONE
            );
            x += run;
        }
    }
    svg.push_str("\"/></svg>");
    Ok(svg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    const PAYLOAD: &str = "lq1.1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed.\
                           3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    /// The modules the SVG's path paints, read back from its `M x y h n v1 h-n z` runs.
    fn painted(svg: &str, width: usize) -> Vec<bool> {
        let path = svg.split("d=\"").nth(1).unwrap().split('"').next().unwrap();
        let mut dark = vec![false; width * width];
        for run in path.split('M').filter(|run| !run.is_empty()) {
            let (x, rest) = run.split_once(' ').unwrap();
            let (y, rest) = rest.split_once('h').unwrap();
            let length = rest.split_once('v').unwrap().0;
            let (x, y, length): (usize, usize, usize) = (
                x.parse().unwrap(),
                y.parse().unwrap(),
                length.parse().unwrap(),
            );
            for column in x..x + length {
                dark[(y - QUIET_ZONE) * width + column - QUIET_ZONE] = true;
            }
        }
        dark
    }

    #[test]
    fn the_svg_paints_exactly_the_dark_modules() {
        let (dark, width) = modules(PAYLOAD).unwrap();
        let svg = svg(PAYLOAD).unwrap();
        assert_eq!(painted(&svg, width), dark);
        assert!(svg.starts_with("<?xml"));
        assert!(svg.ends_with("</svg>"));
    }

    #[test]
    fn a_reader_decodes_the_payload() {
        // Rasterised at 4 pixels per module with the quiet zone, as a screen would show it.
        let (dark, width) = modules(PAYLOAD).unwrap();
        let scale = 4;
        let side = (width + 2 * QUIET_ZONE) * scale;
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
            let (column, row) = (x / scale, y / scale);
            let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&column)
                && (QUIET_ZONE..QUIET_ZONE + width).contains(&row);
            if inside && dark[(row - QUIET_ZONE) * width + column - QUIET_ZONE] {
                0
            } else {
                255
            }
        });
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, PAYLOAD);
    }
}
