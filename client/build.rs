//! Lays out tunnelc's code that runs from start-up to idle together (`symbol-order.txt`,
//! written by `scripts/symbol-order`; see `scripts/link_order.rs`).
include!("../scripts/link_order.rs");

fn main() {
    link_order();
}
