//! Where capture stands in the WAL: the frames of the current generation that are
//! spooled, and the committed frames scanned after them that are not yet.
//!
//! Only offsets are kept: the page images stay in the WAL, which our read transaction
//! keeps from being reset until they are spooled.

use crate::wal::{self, FrameIndex, Scan, WalHeader, WalPosition};

/// Frames of the current WAL generation that are already spooled.
#[derive(Debug)]
pub(super) struct Generation {
    pub header: WalHeader,
    /// Every page's newest frame at or before the cursor's `spooled` position, so a
    /// snapshot can combine the WAL with the database file without any lock.
    pub pages: FrameIndex,
    /// Database size in pages at the last spooled commit of this generation.
    pub db_pages: Option<u32>,
}

/// Committed frames scanned after `spooled`, waiting to be spooled as one L0 file.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub end: Option<WalPosition>,
    pub pages: FrameIndex,
    pub db_pages: Option<u32>,
    pub frames: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }
}

/// The batch, ready to be written as one L0 file.
pub(super) struct Unspooled<'a> {
    pub header: &'a WalHeader,
    pub start: WalPosition,
    pub end: WalPosition,
    pub db_pages: u32,
    pub pages: &'a FrameIndex,
}

#[derive(Debug, Default)]
pub(super) struct WalCursor {
    pub generation: Option<Generation>,
    /// The WAL position of the end of the last spooled file.
    pub spooled: Option<WalPosition>,
    pub batch: Batch,
}

impl WalCursor {
    /// Forgets everything: the next scan starts a generation from its first frame.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    pub fn is_generation(&self, h: &WalHeader) -> bool {
        self.generation
            .as_ref()
            .is_some_and(|g| g.header.salt1 == h.salt1 && g.header.salt2 == h.salt2)
    }

    /// Follows a new WAL generation from its first frame. Returns whether scanned
    /// frames of the old one were still waiting to be spooled (they are lost).
    pub fn start_generation(&mut self, h: WalHeader) -> bool {
        let lost = !self.batch.is_empty();
        self.batch = Batch::default();
        self.generation = Some(Generation {
            header: h,
            pages: FrameIndex::new(),
            db_pages: None,
        });
        self.spooled = Some(WalPosition::start(&h));
        lost
    }

    /// Resumes at `pos` of a generation whose frames up to it are `scan`.
    pub fn resume(&mut self, h: WalHeader, scan: Scan, pos: WalPosition) {
        self.generation = Some(Generation {
            header: h,
            pages: scan.pages,
            db_pages: scan.db_pages,
        });
        self.spooled = Some(pos);
        self.batch = Batch::default();
    }

    /// Where the next scan starts.
    pub fn scan_from(&self, h: &WalHeader) -> WalPosition {
        self.batch
            .end
            .or(self.spooled)
            .unwrap_or_else(|| WalPosition::start(h))
    }

    /// Adds a scan's committed frames to the batch.
    pub fn take(&mut self, scan: Scan) {
        if scan.frames == 0 {
            return;
        }
        self.batch.end = Some(scan.end);
        self.batch.pages.absorb(scan.pages);
        self.batch.db_pages = scan.db_pages;
        self.batch.frames += scan.frames;
    }

    /// The batch to write, if there is one.
    pub fn unspooled(&self) -> Option<Unspooled<'_>> {
        let g = self.generation.as_ref()?;
        Some(Unspooled {
            header: &g.header,
            start: self
                .spooled
                .unwrap_or_else(|| WalPosition::start(&g.header)),
            end: self.batch.end?,
            db_pages: self.batch.db_pages?,
            pages: &self.batch.pages,
        })
    }

    /// The batch is spooled: its frames join the generation's index.
    pub fn mark_spooled(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let (Some(g), Some(end)) = (self.generation.as_mut(), batch.end) else {
            return;
        };
        g.pages.absorb(batch.pages);
        if let Some(n) = batch.db_pages {
            g.pages.truncate(n);
            g.db_pages = Some(n);
        }
        self.spooled = Some(end);
    }

    /// Frames of the current generation that are spooled or scanned into the batch.
    pub fn scanned_frames(&self) -> u64 {
        self.spooled_frames() + self.batch.frames
    }

    /// Frames of the current generation that are spooled (they count toward the
    /// checkpoint threshold).
    pub fn spooled_frames(&self) -> u64 {
        match (&self.generation, self.spooled) {
            (Some(g), Some(c)) if c.salt1 == g.header.salt1 && c.salt2 == g.header.salt2 => {
                (c.offset - wal::WAL_HEADER_SIZE) / g.header.frame_size()
            }
            _ => 0,
        }
    }
}
