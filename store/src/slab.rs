//! Small objects live in slabs: shared files of the memory tier that hold many objects each,
//! so that a put is a copy into a mapping rather than a file created, written and renamed.
//!
//! - An object of at most [`SLAB_OBJECT_MAX`] bytes goes into the current slab, after a
//!   64-byte slot header (its id, length, kind, and whether it is live). Slots are never
//!   reused: a slab only goes, file and all, once every object in it is gone and it is no
//!   longer the one being filled.
//! - **The id says where the object is.** A slab object's id carries a tag, the slab's number
//!   and the slot's offset, beside 64 random bits. Any process of the node can then find it
//!   without asking the store: it maps the slab file and checks the slot header's id and live
//!   flag, so a stale or foreign id reads as "not found", never as another object.
//! - Slabs take at most a quarter of the memory cap, and are not spilled: when they are full,
//!   small objects go the way of large ones (one file each, spilled under pressure).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::{Kind, ObjectId, Result, StoreError, io};

/// Bytes per slab file.
pub(crate) const SLAB_BYTES: usize = 4 << 20;
/// The largest object kept in a slab.
pub(crate) const SLAB_OBJECT_MAX: usize = 64 << 10;
/// A slot's header: id (16 bytes), length (8), kind (1), live (1), then padding.
const HEADER: usize = 64;
/// The top byte of a slab object's id.
const TAG: u128 = 0x5a;

/// The id of the object in slot `offset` of slab `slab`.
pub(crate) fn slab_id(slab: u32, offset: u32) -> ObjectId {
    let random = u128::from(rand::random::<u64>());
    ObjectId(TAG << 120 | u128::from(slab & 0xff_ffff) << 96 | u128::from(offset) << 64 | random)
}

/// Where object `id` lies, if it is a slab object's id.
pub(crate) fn slab_location(id: &ObjectId) -> Option<(u32, u32)> {
    (id.0 >> 120 == TAG).then_some((((id.0 >> 96) & 0xff_ffff) as u32, (id.0 >> 64) as u32))
}

/// The file of slab `slab` in the memory tier `dir`.
pub(crate) fn slab_path(dir: &Path, slab: u32) -> PathBuf {
    dir.join(format!("slab-{slab:06x}.slab"))
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Batch => 1,
        Kind::Bytes => 2,
    }
}

/// A slab the store is filling or holds objects in.
#[derive(Debug)]
pub(crate) struct Slab {
    write: MmapRaw,
    /// The same file mapped read-only, which reads slice.
    read: bytes::Bytes,
    used: usize,
    /// Objects still in it.
    pub(crate) live: usize,
}

impl Slab {
    /// Creates slab `number` in `dir`.
    pub(crate) fn create(dir: &Path, number: u32) -> Result<Slab> {
        let path = slab_path(dir, number);
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            crate::allocate(&file, SLAB_BYTES)?;
            let write = MmapOptions::new().len(SLAB_BYTES).map_raw(&file)?;
            #[allow(unsafe_code)]
            // SAFETY: slots are written once, before their id is handed out, and only the
            // live byte changes afterwards; readers check it before trusting a slot.
            let read = unsafe { memmap2::Mmap::map(&file) }?;
            Ok::<_, std::io::Error>((write, read))
        })();
        match made {
            Ok((write, read)) => Ok(Slab {
                write,
                read: bytes::Bytes::from_owner(read),
                used: 0,
                live: 0,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(StoreError::Io {
                    context: format!("creating {}", path.display()),
                    source: e,
                })
            }
        }
    }

    /// The room a slot for `len` bytes takes.
    pub(crate) fn slot_size(len: usize) -> usize {
        crate::build::align(HEADER + len)
    }

    /// Whether a slot for `len` bytes still fits.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.used + Self::slot_size(len) <= SLAB_BYTES
    }

    /// Writes `data` into a new slot of slab `number` and returns the object's id. The
    /// caller checked that it [`fits`](Self::fits).
    pub(crate) fn append(&mut self, number: u32, kind: Kind, data: &[u8]) -> ObjectId {
        let offset = self.used;
        let id = slab_id(number, offset as u32);
        let mut header = [0u8; HEADER];
        header[..16].copy_from_slice(&id.0.to_le_bytes());
        header[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        header[24] = kind_code(kind);
        header[25] = 1;
        #[allow(unsafe_code)]
        // SAFETY: the slot lies in the mapping (`fits` was checked) past every slot handed
        // out, so nothing reads it yet.
        unsafe {
            let base = self.write.as_mut_ptr().add(offset);
            std::ptr::copy_nonoverlapping(header.as_ptr(), base, HEADER);
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(HEADER), data.len());
        }
        self.used += Self::slot_size(data.len());
        self.live += 1;
        id
    }

    /// Marks the object at `offset` gone, for readers in other processes.
    pub(crate) fn kill(&self, offset: u32) {
        let at = offset as usize + 25;
        if at < SLAB_BYTES {
            #[allow(unsafe_code)]
            // SAFETY: in the mapping; a volatile one-byte store, which readers load volatile.
            unsafe {
                std::ptr::write_volatile(self.write.as_mut_ptr().add(at), 0);
            }
        }
    }

    /// The object `id`'s bytes, in place.
    pub(crate) fn read(&self, id: &ObjectId, kind: Kind) -> Result<bytes::Bytes> {
        read_slot(&self.read, id, kind)
    }
}

/// Object `id`'s bytes in the slab mapped as `mapping`, after checking that the slot there
/// holds it, live and of `kind`.
pub(crate) fn read_slot(mapping: &bytes::Bytes, id: &ObjectId, kind: Kind) -> Result<bytes::Bytes> {
    let Some((_, offset)) = slab_location(id) else {
        return Err(StoreError::NotFound(*id));
    };
    let start = offset as usize;
    let header = mapping
        .get(start..start + HEADER)
        .ok_or(StoreError::NotFound(*id))?;
    let mut stored = [0u8; 16];
    stored.copy_from_slice(&header[..16]);
    #[allow(unsafe_code)]
    // SAFETY: in the mapping (checked above); the store may clear this byte concurrently,
    // hence the volatile load.
    let live = unsafe { std::ptr::read_volatile(header.as_ptr().add(25)) };
    if u128::from_le_bytes(stored) != id.0 || live != 1 {
        return Err(StoreError::NotFound(*id));
    }
    if header[24] != kind_code(kind) {
        let found = if header[24] == 1 {
            Kind::Batch
        } else {
            Kind::Bytes
        };
        return Err(StoreError::WrongKind {
            id: *id,
            found,
            wanted: kind,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| StoreError::NotFound(*id))?;
    let data = start + HEADER;
    if data + len > mapping.len() {
        return Err(StoreError::NotFound(*id));
    }
    // Copied out (64 KiB at most): a view would keep the whole slab's pages alive after the
    // store freed it, uncounted.
    Ok(bytes::Bytes::copy_from_slice(&mapping[data..data + len]))
}

/// Maps slab file `path` read-only, for a reader in another process.
pub(crate) fn map_slab(path: &Path) -> Result<bytes::Bytes> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    #[allow(unsafe_code)]
    // SAFETY: as for `Slab::create`'s read mapping.
    let mapping =
        unsafe { memmap2::Mmap::map(&file) }.map_err(io(format!("mapping {}", path.display())))?;
    Ok(bytes::Bytes::from_owner(mapping))
}
