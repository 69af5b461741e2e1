//! Stream adapters used when reading and pushing: gzip decoding, taking a window of a
//! stream, and holding a body to its declared length.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::ByteStream;
use crate::error::RegistryError;

/// Decompresses a gzip stream chunk by chunk.
pub fn gunzip(stream: ByteStream) -> ByteStream {
    use std::io::Write;
    let corrupt = |e: std::io::Error| RegistryError::Corrupt(format!("gzip layer: {e}"));
    let decoder = flate2::write::MultiGzDecoder::new(Vec::new());
    futures::stream::unfold(Some((stream, decoder)), move |state| async move {
        let (mut stream, mut decoder) = state?;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = decoder.write_all(&chunk) {
                        return Some((Err(corrupt(e)), None));
                    }
                    let out = std::mem::take(decoder.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((stream, decoder))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    return match decoder.try_finish() {
                        Ok(()) => {
                            let out = std::mem::take(decoder.get_mut());
                            (!out.is_empty()).then(|| (Ok(Bytes::from(out)), None))
                        }
                        Err(e) => Some((Err(corrupt(e)), None)),
                    };
                }
            }
        }
    })
    .boxed()
}

/// Yields `take` bytes after skipping `skip`; with `drain`, keeps consuming the source to
/// its end afterwards (so that a verifying source checks the whole blob and can fail).
pub fn window(source: ByteStream, skip: u64, take: u64, drain: bool) -> ByteStream {
    struct State {
        source: ByteStream,
        skip: u64,
        take: u64,
        drain: bool,
    }
    futures::stream::unfold(
        State {
            source,
            skip,
            take,
            drain,
        },
        |mut st| async move {
            loop {
                if st.take == 0 && !st.drain {
                    return None;
                }
                match st.source.next().await {
                    None => {
                        if st.take > 0 {
                            let message = format!("content ended {} bytes early", st.take);
                            st.take = 0;
                            st.drain = false;
                            return Some((Err(RegistryError::Corrupt(message)), st));
                        }
                        return None;
                    }
                    Some(Err(e)) => {
                        st.take = 0;
                        st.drain = false;
                        return Some((Err(e), st));
                    }
                    Some(Ok(mut chunk)) => {
                        let skipped = st.skip.min(chunk.len() as u64);
                        st.skip -= skipped;
                        let _ = chunk.split_to(skipped as usize);
                        let kept = st.take.min(chunk.len() as u64);
                        st.take -= kept;
                        chunk.truncate(kept as usize);
                        if !chunk.is_empty() {
                            return Some((Ok(chunk), st));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

/// Fails a stream whose total length differs from `declared`.
pub fn exact_length(body: ByteStream, declared: u64) -> ByteStream {
    let mut received = 0u64;
    body.map(move |item| {
        let chunk = item?;
        received += chunk.len() as u64;
        if received > declared {
            return Err(RegistryError::SizeMismatch { declared, received });
        }
        Ok(chunk)
    })
    .chain(futures::stream::once(async { Ok(Bytes::new()) }))
    .scan(0u64, move |total, item| {
        let item = item.and_then(|chunk| {
            *total += chunk.len() as u64;
            if chunk.is_empty() && *total != declared {
                return Err(RegistryError::SizeMismatch {
                    declared,
                    received: *total,
                });
            }
            Ok(chunk)
        });
        futures::future::ready(Some(item))
    })
    .try_filter(|chunk| futures::future::ready(!chunk.is_empty()))
    .boxed()
}
