//! Lays out tunneld's code that runs from start-up to idle together (`symbol-order.txt`,
//! written by `scripts/symbol-order`) and packs its relocations (see `scripts/link_args.rs`).
include!("../scripts/link_args.rs");

fn main() {
    link_order();
    packed_relocations();
}
