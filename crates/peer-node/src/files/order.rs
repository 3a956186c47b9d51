//! The order in which a file job fetches its pieces: planned in blocks,
//! rarest first within a block (rarity: how many connected peers announced
//! the piece), so the leechers of one file start on different pieces and
//! then fetch from each other, as in a BitTorrent swarm.

use std::sync::Arc;

use rand::RngExt;
use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use crate::pieces::Link;

/// Pieces planned at once, and fetched in a random, rarest-first order
/// among themselves (see `run::fetch_into`): 128 MiB of 1 MiB pieces. The
/// whole-file hash can only follow the completed prefix, so at the end up
/// to this many pieces are hashed after the last one arrives.
pub const FETCH_BLOCK_PIECES: usize = 128;
/// How far past the oldest piece still being fetched a job may plan (two
/// blocks): the bound on what waits for the whole-file hash.
pub const LEAD_MAX_BYTES: u64 = 2 * FETCH_BLOCK_PIECES as u64 * PIECE_MAX as u64;
/// Pieces nobody announced that a job fetches at once after a connected
/// peer announced a piece of its file (other peers are fetching it too):
/// they come from the file's seeders, and a cap keeps the leechers from
/// all taking the same ones from them at once; the pieces the others
/// announced fill the rest of `run::PIECES_IN_FLIGHT`. A job that hears no
/// announcement (the only one fetching) is never capped.
pub const UNANNOUNCED_IN_FLIGHT_MAX: usize = 8;
/// Pieces of the block compared for rarity at each pick.
pub const RAREST_SAMPLE: usize = 8;

/// A data piece of the file, planned and not yet fetched.
#[derive(Debug, Clone, Copy)]
pub(super) struct Planned {
    pub(super) id: PieceId,
    pub(super) len: usize,
    /// Where it starts in the file.
    pub(super) offset: u64,
}

/// The piece [`pick`] chose.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pick {
    pub(super) piece: Planned,
    /// How many connected peers announced it.
    pub(super) holders: usize,
    /// Whether any piece of the sample was announced: other peers are
    /// fetching this file.
    pub(super) saw_announced: bool,
}

/// Takes from `block` (not empty) the piece to fetch next: of
/// [`RAREST_SAMPLE`] neighbours from a random place in it (the whole block
/// when smaller), the one the fewest of `links` announced, the first
/// among equals; with `unannounced_ok` false, only a piece somebody
/// announced (`None` if the sample has none).
pub(super) fn pick(
    block: &mut Vec<Planned>,
    links: &[Arc<Link>],
    rng: &mut impl RngExt,
    unannounced_ok: bool,
) -> Option<Pick> {
    let holders = |p: &Planned| links.iter().filter(|l| l.announced(&p.id)).count();
    let start = rng.random_range(0..block.len());
    let mut best: Option<(usize, usize)> = None;
    let mut saw_announced = false;
    for i in (0..RAREST_SAMPLE.min(block.len())).map(|k| (start + k) % block.len()) {
        let n = holders(&block[i]);
        saw_announced |= n > 0;
        if (unannounced_ok || n > 0) && best.is_none_or(|(_, fewest)| n < fewest) {
            best = Some((i, n));
        }
    }
    let (i, holders) = best?;
    Some(Pick {
        piece: block.swap_remove(i),
        holders,
        saw_announced,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn planned(n: usize) -> Planned {
        Planned {
            id: PieceId::of(&n.to_le_bytes()),
            len: 1,
            offset: n as u64,
        }
    }

    fn link(id: u64) -> Arc<Link> {
        let closer = Arc::new(crate::net::Closer::default());
        let addr = wire_format::PeerAddr::new([127, 0, 0, 1].into(), 7001);
        let (link, _frames) = Link::new(
            id,
            addr,
            None,
            Arc::default(),
            closer,
            std::time::Instant::now(),
        );
        Arc::new(link)
    }

    fn rarest(block: &mut Vec<Planned>, links: &[Arc<Link>], rng: &mut impl RngExt) -> u64 {
        pick(block, links, rng, true).unwrap().piece.offset
    }

    #[test]
    fn the_piece_picked_next_is_the_rarest_of_a_random_sample_and_each_is_picked_once() {
        let links = [link(1), link(2)];
        // Piece 0 is announced by both peers, 1 by one, 2 by nobody.
        links[0].note_announced(planned(0).id);
        links[1].note_announced(planned(0).id);
        links[0].note_announced(planned(1).id);
        for seed in 0..16 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut block: Vec<Planned> = (0..3).map(planned).collect();
            let order: Vec<u64> = (0..3)
                .map(|_| rarest(&mut block, &links, &mut rng))
                .collect();
            assert_eq!(order, [2, 1, 0], "seed {seed}");
            assert!(block.is_empty());
        }
        // In a block larger than the sample, the pick is the rarest of the
        // sample: one piece in 16 unannounced is found as often as the
        // sample's share of the block says (8 neighbours of 16: half).
        let block: Vec<Planned> = (100..116).map(planned).collect();
        for p in &block[1..] {
            links[0].note_announced(p.id);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let unannounced = (0..64)
            .filter(|_| rarest(&mut block.clone(), &links, &mut rng) == 100)
            .count();
        assert!((24..=40).contains(&unannounced), "{unannounced} of 64");
    }

    #[test]
    fn a_pick_limited_to_announced_pieces_takes_the_rarest_of_those_or_none() {
        let links = [link(1), link(2)];
        links[0].note_announced(planned(0).id);
        links[1].note_announced(planned(0).id);
        links[0].note_announced(planned(1).id);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut block: Vec<Planned> = (0..3).map(planned).collect();
        let first = pick(&mut block, &links, &mut rng, false).unwrap();
        assert_eq!((first.piece.offset, first.holders), (1, 1));
        assert!(first.saw_announced);
        let second = pick(&mut block, &links, &mut rng, false).unwrap();
        assert_eq!((second.piece.offset, second.holders), (0, 2));
        assert!(pick(&mut block, &links, &mut rng, false).is_none());
        assert_eq!(block.len(), 1, "a refused pick takes nothing");
        let last = pick(&mut block, &links, &mut rng, true).unwrap();
        assert_eq!((last.piece.offset, last.holders), (2, 0));
        assert!(!last.saw_announced);
    }

    #[test]
    fn nodes_with_different_seeds_start_a_block_at_different_pieces() {
        let firsts: std::collections::HashSet<u64> = (0..8)
            .map(|seed| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut block: Vec<Planned> = (0..FETCH_BLOCK_PIECES).map(planned).collect();
                rarest(&mut block, &[], &mut rng)
            })
            .collect();
        assert!(firsts.len() >= 6, "8 nodes start at only {firsts:?}");
    }
}
