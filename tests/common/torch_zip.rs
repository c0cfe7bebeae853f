//! A small `torch.save` writer for tests: a state dict (an `OrderedDict` of tensors, as
//! `Module.state_dict()` gives) pickled with protocol 2 into a zip of stored entries aligned
//! to 64 bytes, the layout PyTorch >= 1.6 writes (`archive/data.pkl`, `archive/data/<key>`,
//! `archive/byteorder`, `archive/version`). One storage per tensor, contiguous.

#![allow(dead_code)]

/// Storage element types the writer knows: `(torch storage class, bytes per element)`.
#[derive(Clone, Copy)]
pub enum Storage {
    F32,
    F16,
}

fn int(p: &mut Vec<u8>, v: usize) {
    if v < 256 {
        p.extend([b'K', v as u8]);
    } else if v < 65536 {
        p.push(b'M');
        p.extend((v as u16).to_le_bytes());
    } else {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
}

fn string(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

fn tuple(p: &mut Vec<u8>, v: &[usize]) {
    p.push(b'(');
    v.iter().for_each(|&x| int(p, x));
    p.push(b't');
}

fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The bytes of a `torch.save` archive of `tensors` (`(name, shape, values)`), each stored
/// as `storage`.
pub fn torch_save(tensors: &[(String, Vec<usize>, Vec<f32>)], storage: Storage) -> Vec<u8> {
    let (class, _) = match storage {
        Storage::F32 => ("FloatStorage", 4),
        Storage::F16 => ("HalfStorage", 2),
    };
    let mut p = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.push(b'(');
    let mut files = Vec::new();
    for (key, (name, shape, values)) in tensors.iter().enumerate() {
        string(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        string(&mut p, "storage");
        p.extend(format!("ctorch\n{class}\n").as_bytes());
        string(&mut p, &key.to_string());
        string(&mut p, "cpu");
        int(&mut p, values.len());
        p.extend(b"tQ");
        int(&mut p, 0);
        tuple(&mut p, shape);
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        tuple(&mut p, &stride);
        p.push(0x89);
        p.extend(b"ccollections\nOrderedDict\n)R");
        p.extend(b"tR");
        let bytes: Vec<u8> = match storage {
            Storage::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Storage::F16 => values
                .iter()
                .flat_map(|&v| f16_bits(v).to_le_bytes())
                .collect(),
        };
        files.push((format!("archive/data/{key}"), bytes));
    }
    p.extend(b"u.");
    let mut entries = vec![
        ("archive/data.pkl".to_string(), p),
        ("archive/byteorder".to_string(), b"little".to_vec()),
    ];
    entries.extend(files);
    entries.push(("archive/version".to_string(), b"3\n".to_vec()));
    zip(&entries)
}

/// A zip of stored entries, data aligned to 64 bytes by an extra field (CRCs left zero:
/// the engine's reader does not check them).
pub fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let off = out.len();
        let pad = (64 - (off + 30 + name.len() + 4) % 64) % 64;
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(0u32.to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(((4 + pad) as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(0x4246u16.to_le_bytes());
        out.extend((pad as u16).to_le_bytes());
        out.extend(vec![b'Z'; pad]);
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(0u32.to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend((off as u32).to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd = out.len();
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend((cd as u32).to_le_bytes());
    out.extend([0, 0]);
    out
}
