//! The sections of the GC bench: blobs, images, orphans; each builds its inputs, measures the listing baseline, the dry-run plan and the real sweep.

pub mod blobs;
pub mod images;
pub mod orphans;
