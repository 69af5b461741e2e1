//! `reposure-mount`: see the library.

fn main() {
    reposure_mount::main(std::env::args().skip(1).collect())
}
