fn main() {
    let t = tch::Tensor::from_slice(&[1f32, 2., 3.]);
    t.print();
    println!("cuda: {}", tch::Cuda::is_available());
}
