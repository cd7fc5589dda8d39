//! Greedy CTC decoding (FunASR `inference`): argmax per frame, collapse repeats, drop blanks.

/// The CTC blank id (`SenseVoiceSmall.blank_id`).
pub const BLANK_ID: u32 = 0;

/// `unique_consecutive(frame_ids)` without `blank`: the ids passed to `DecodeIds`.
pub fn ctc_greedy(frame_ids: &[u32], blank: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut prev = None;
    for &id in frame_ids {
        if prev != Some(id) && id != blank {
            out.push(id);
        }
        prev = Some(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_repeats_then_drops_blanks() {
        // Repeats separated by a blank stay separate tokens, as in torch.unique_consecutive.
        assert_eq!(ctc_greedy(&[0, 5, 5, 0, 5, 7, 7, 0, 0, 3], 0), [5, 5, 7, 3]);
        assert_eq!(ctc_greedy(&[0, 0, 0], 0), Vec::<u32>::new());
        assert_eq!(ctc_greedy(&[], 0), Vec::<u32>::new());
        assert_eq!(ctc_greedy(&[4, 4, 4], 0), [4]);
    }
}
