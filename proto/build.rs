fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=monitor.proto");
    prost_build::compile_protos(&["monitor.proto"], &["."])
}
