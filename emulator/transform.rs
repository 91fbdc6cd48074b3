//! Turns a kernels file (`kernels/*.cu` or `*.cuh`) into host C++ for the emulated device: the kernel source as
//! written, compiled with `emulator/shim/cuda_shim.h`, except for what a host compiler cannot take:
//! - `asm volatile("text" : outputs : inputs : clobbers)` becomes `hgemu_asm("text", {operands})`, executed by
//!   the PTX interpreter from its text (string literals kept byte for byte, operands in GCC's numbering:
//!   outputs then inputs);
//! - `__shared__ T name[N];` becomes a reference `T (&name)[N]` to storage the runtime gives that declaration
//!   (once, from its static shared arena, which it knows as shared memory): GCC ignores a `section`
//!   attribute on the static locals of templates, so the declarations themselves are rewritten;
//! - `extern __shared__ T name[];` becomes a pointer to the runtime's dynamic shared buffer;
//! - for a `.cu` (entries or globals given), a registry of its kernels (the PTX `.entry` names) and module
//!   variables (PTX `.const` / `.global` names, less nvcc's own `__cudart_*` math tables, which the host build
//!   does not have), appended at the end.
//!
//! Line numbers are kept, so compiler diagnostics point at the original lines.
//! Std only: build.rs includes this file with `#[path]`.

/// The host C++ for one kernels file. `module` is the module name (`attention` for kernels/attention.cu);
/// `entries` and `globals` are empty for a header.
pub fn host_source(
    module: &str,
    source: &str,
    entries: &[String],
    globals: &[String],
) -> Result<String, String> {
    let src = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 4096);
    let mut i = 0;
    let mut copied = 0; // source[copied..i] not yet written to out
    while i < src.len() {
        let c = src[i];
        if c == b'/' && matches!(src.get(i + 1), Some(b'/' | b'*')) {
            i = skip_comment(src, i);
        } else if c == b'"' || c == b'\'' {
            i = skip_literal(src, i).ok_or_else(|| err(module, src, i, "unterminated literal"))?;
        } else if is_ident_start(c) {
            let start = i;
            while i < src.len() && is_ident(src[i]) {
                i += 1;
            }
            // An identifier that continues a number (1e5f) or a longer name is not a keyword.
            if start > 0 && (is_ident(src[start - 1]) || src[start - 1] == b'.') {
                continue;
            }
            let word = &source[start..i];
            let replaced = match word {
                "asm" | "__asm__" | "__asm" => Some(asm_statement(module, src, start, i)?),
                "extern" => extern_shared(module, src, start, i)?,
                "__shared__" => Some(static_shared(module, src, start, i)?),
                _ => None,
            };
            if let Some((text, end)) = replaced {
                out.push_str(&source[copied..start]);
                out.push_str(&keep_lines(&text, &source[start..end]));
                i = end;
                copied = end;
            }
        } else {
            i += 1;
        }
    }
    out.push_str(&source[copied..]);
    if !entries.is_empty() || !globals.is_empty() {
        out.push_str(&registry(module, entries, globals));
    }
    Ok(out)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn line_of(src: &[u8], at: usize) -> usize {
    1 + src[..at.min(src.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
}

fn err(module: &str, src: &[u8], at: usize, what: &str) -> String {
    format!("{module}: line {}: {what}", line_of(src, at))
}

/// Index just past the comment starting at `i` (`//` or `/*`).
fn skip_comment(src: &[u8], i: usize) -> usize {
    if src[i + 1] == b'/' {
        let mut j = i + 2;
        // A backslash-newline continues a line comment.
        while j < src.len() && !(src[j] == b'\n' && src[j - 1] != b'\\') {
            j += 1;
        }
        j
    } else {
        let mut j = i + 2;
        while j + 1 < src.len() && !(src[j] == b'*' && src[j + 1] == b'/') {
            j += 1;
        }
        (j + 2).min(src.len())
    }
}

/// Index just past the string or character literal starting at `i`.
fn skip_literal(src: &[u8], i: usize) -> Option<usize> {
    let quote = src[i];
    let mut j = i + 1;
    while j < src.len() {
        match src[j] {
            b'\\' => j += 2,
            b'\n' => return None,
            c if c == quote => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Index of the first byte at or after `i` that is not whitespace or a comment.
fn skip_space(src: &[u8], mut i: usize) -> usize {
    while i < src.len() {
        if src[i].is_ascii_whitespace() || src[i] == b'\\' && src.get(i + 1) == Some(&b'\n') {
            i += 1;
        } else if src[i] == b'/' && matches!(src.get(i + 1), Some(b'/') | Some(b'*')) {
            i = skip_comment(src, i);
        } else {
            break;
        }
    }
    i
}

/// Walks src[from..to] outside literals and comments, with the bracket depth after each byte, and stops at the
/// first byte `visit` maps to `Some`. `None`: a literal never closed, or a bracket closed that was never opened.
fn scan_top<T>(
    src: &[u8],
    from: usize,
    to: usize,
    mut visit: impl FnMut(usize, u8, usize) -> Option<T>,
) -> Option<Option<T>> {
    let (mut depth, mut j) = (0usize, from);
    while j < to {
        match src[j] {
            b'"' | b'\'' => {
                j = skip_literal(src, j)?;
                continue;
            }
            b'/' if matches!(src.get(j + 1), Some(b'/' | b'*')) => {
                j = skip_comment(src, j);
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        if let Some(found) = visit(j, src[j], depth) {
            return Some(Some(found));
        }
        j += 1;
    }
    Some(None)
}

/// Index of the `)` matching the `(` at `open`.
fn matching_paren(src: &[u8], open: usize) -> Option<usize> {
    let closer = scan_top(src, open, src.len(), |j, c, depth| {
        (depth == 0 && matches!(c, b')' | b']' | b'}')).then_some((j, c))
    })??;
    (closer.1 == b')').then_some(closer.0)
}

/// Splits src[from..to] at the top-level bytes `sep` (outside literals, comments and brackets).
fn split_top(src: &[u8], from: usize, to: usize, sep: u8) -> Option<Vec<(usize, usize)>> {
    let (mut parts, mut start) = (Vec::new(), from);
    scan_top(src, from, to, |j, c, depth| {
        if c == sep && depth == 0 {
            parts.push((start, j));
            start = j + 1;
        }
        None::<()>
    })?;
    parts.push((start, to));
    Some(parts)
}

/// Index of the `;` that ends the statement starting at `from` (outside literals, comments and brackets).
fn end_of_statement(src: &[u8], from: usize) -> Option<usize> {
    scan_top(src, from, src.len(), |j, c, depth| {
        (c == b';' && depth == 0).then_some(j)
    })
    .flatten()
}

/// The string literals at the start of src[from..to] (whitespace and comments between them allowed), verbatim
/// and joined by spaces (C++ concatenates them into the same string), and where they end.
fn string_literals(src: &[u8], from: usize, to: usize) -> Option<(String, usize)> {
    let mut parts = Vec::new();
    let mut j = skip_space(src, from);
    while j < to && src[j] == b'"' {
        let end = skip_literal(src, j)?;
        parts.push(String::from_utf8_lossy(&src[j..end]).into_owned());
        j = skip_space(src, end);
    }
    (!parts.is_empty()).then(|| (parts.join(" "), j))
}

/// `asm [volatile] ( ... )` whose keyword spans src[start..word_end]: the hgemu_asm call that replaces it
/// (the statement's `;` stays) and the end of the replaced text.
fn asm_statement(
    module: &str,
    src: &[u8],
    start: usize,
    word_end: usize,
) -> Result<(String, usize), String> {
    let fail = |at: usize, what: &str| err(module, src, at, what);
    let mut j = skip_space(src, word_end);
    loop {
        let k = j;
        while j < src.len() && is_ident(src[j]) {
            j += 1;
        }
        match std::str::from_utf8(&src[k..j]).unwrap_or("") {
            "" => break,
            "volatile" | "__volatile__" | "__volatile" | "inline" => j = skip_space(src, j),
            "goto" => return Err(fail(start, "asm goto is not supported")),
            _ => return Err(fail(start, "unexpected word after asm")),
        }
    }
    if src.get(j) != Some(&b'(') {
        return Err(fail(start, "expected ( after asm"));
    }
    let close = matching_paren(src, j)
        .ok_or_else(|| fail(start, "unbalanced parentheses in asm statement"))?;
    // Sections split at top-level colons: template, outputs, inputs, clobbers.
    let sections =
        split_top(src, j + 1, close, b':').ok_or_else(|| fail(start, "malformed asm statement"))?;
    if sections.len() > 4 {
        return Err(fail(start, "asm statement with more than four sections"));
    }
    let (text, text_end) = string_literals(src, sections[0].0, sections[0].1)
        .ok_or_else(|| fail(start, "asm template is not a string literal"))?;
    if skip_space(src, text_end) != sections[0].1 {
        return Err(fail(start, "asm template is not a string literal"));
    }
    let mut operands = Vec::new();
    for (section, &(from, to)) in sections.iter().enumerate().skip(1).take(2) {
        if skip_space(src, from) == to {
            continue; // an empty list
        }
        for (a, b) in
            split_top(src, from, to, b',').ok_or_else(|| fail(from, "malformed asm operands"))?
        {
            operands.push(asm_operand(module, src, a, b, section == 1)?);
        }
    }
    Ok((
        format!("hgemu_asm({text}, {{{}}})", operands.join(", ")),
        close + 1,
    ))
}

/// One operand `"constraint"(expression)`: its hg_out / hg_in call.
fn asm_operand(
    module: &str,
    src: &[u8],
    from: usize,
    to: usize,
    output: bool,
) -> Result<String, String> {
    let fail = |what: &str| err(module, src, from, what);
    let (constraint, after) =
        string_literals(src, from, to).ok_or_else(|| fail("asm operand without a constraint"))?;
    let flags: String = constraint.trim_matches('"').chars().collect();
    let inout = flags.contains('+');
    if output && !inout && !flags.contains('=') || !output && (flags.contains('=') || inout) {
        return Err(fail(&format!(
            "asm constraint {constraint} in the wrong list"
        )));
    }
    let letter = match flags.trim_start_matches(['=', '+', '&']).chars().next() {
        Some(c @ ('r' | 'l' | 'f' | 'd' | 'h' | 'n')) => c,
        Some('i') => 'n',
        _ => {
            return Err(fail(&format!(
                "asm constraint {constraint} is not supported"
            )))
        }
    };
    let open = skip_space(src, after);
    let close = if src.get(open) == Some(&b'(') {
        matching_paren(src, open)
    } else {
        None
    };
    let close = close.ok_or_else(|| fail("asm operand without (expression)"))?;
    if skip_space(src, close + 1) != to {
        return Err(fail("unexpected text after an asm operand"));
    }
    let expr = String::from_utf8_lossy(&src[open..=close]);
    Ok(if output {
        format!("hg_out('{letter}', {inout}, {expr})")
    } else {
        format!("hg_in('{letter}', {expr})")
    })
}

/// `extern __shared__ [__align__(N)] T name[];` starting at `start` (the `extern` keyword ends at word_end):
/// a pointer `T* const name` to the dynamic shared buffer. None for any other `extern`.
fn extern_shared(
    module: &str,
    src: &[u8],
    start: usize,
    word_end: usize,
) -> Result<Option<(String, usize)>, String> {
    let j = skip_space(src, word_end);
    if !src[j..].starts_with(b"__shared__") || src.get(j + 10).is_some_and(|&c| is_ident(c)) {
        return Ok(None);
    }
    let fail = |what: &str| err(module, src, start, what);
    let mut end = j;
    while end < src.len() && src[end] != b';' {
        end += 1;
    }
    if end == src.len() {
        return Err(fail("extern __shared__ without ;"));
    }
    let mut decl = String::from_utf8_lossy(&src[j + 10..end]).into_owned();
    while let Some(at) = decl.find("__align__") {
        let rest = &decl.as_bytes()[at..];
        let open = rest
            .iter()
            .position(|&c| c == b'(')
            .ok_or_else(|| fail("malformed __align__"))?;
        let close = rest
            .iter()
            .position(|&c| c == b')')
            .ok_or_else(|| fail("malformed __align__"))?;
        if close < open {
            return Err(fail("malformed __align__"));
        }
        decl.replace_range(at..at + close + 1, " ");
    }
    let decl = decl.trim();
    let array = decl
        .strip_suffix(']')
        .map(|d| d.trim_end())
        .and_then(|d| d.strip_suffix('['));
    let array = array
        .ok_or_else(|| fail("extern __shared__ must be an unsized array `T name[]`"))?
        .trim_end();
    let name_at = array
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |p| p + 1);
    let (ty, name) = (array[..name_at].trim(), &array[name_at..]);
    if ty.is_empty() || name.is_empty() {
        return Err(fail("extern __shared__ without a type or a name"));
    }
    Ok(Some((
        format!("{ty}* const {name} = static_cast<{ty}*>(hgemu_dynamic_shared())"),
        end,
    )))
}

/// `__shared__ [__align__(N)] T a[..], b;` whose keyword spans src[start..word_end]: for each declarator, a
/// static slot for the storage's address and a reference bound to it,
/// `static T (*hg_shared_a)[..] = nullptr; T (&a)[..] = *hg_shared_static(hg_shared_a, N);` (N 0: none;
/// a scalar `b`: `static T* hg_shared_b = nullptr; T& b = ..`).
fn static_shared(
    module: &str,
    src: &[u8],
    start: usize,
    word_end: usize,
) -> Result<(String, usize), String> {
    let fail = |what: &str| err(module, src, start, what);
    let from = word_end;
    let end =
        end_of_statement(src, from).ok_or_else(|| fail("__shared__ declaration without ;"))?;
    let mut decl = String::from_utf8_lossy(&src[from..end]).into_owned();
    let mut align = "0".to_string();
    if let Some(at) = decl.find("__align__") {
        let open = at
            + decl[at..]
                .find('(')
                .ok_or_else(|| fail("malformed __align__"))?;
        let close =
            matching_paren(decl.as_bytes(), open).ok_or_else(|| fail("malformed __align__"))?;
        align = decl[open + 1..close].trim().to_string();
        decl.replace_range(at..=close, " ");
    }
    if decl.contains('=') {
        return Err(fail("a __shared__ variable cannot have an initializer"));
    }
    let bytes = decl.as_bytes();
    let declarators = split_top(bytes, 0, bytes.len(), b',')
        .ok_or_else(|| fail("malformed __shared__ declaration"))?;
    let mut base = String::new();
    let mut out = String::new();
    for (k, &(a, b)) in declarators.iter().enumerate() {
        let d = decl[a..b].trim();
        // The name is the last identifier before the first `[` (or the end).
        let head = &d[..d.find('[').unwrap_or(d.len())];
        let head = head.trim_end();
        let name_at = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let name = &head[name_at..];
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err(fail("a __shared__ declarator without a name"));
        }
        let dims = d[head.len()..].trim();
        let mut prefix = head[..name_at].trim().to_string();
        if k == 0 {
            // The type, less the pointer declarators that belong to this name only.
            let stars = prefix.len()
                - prefix
                    .trim_end_matches(|c: char| c == '*' || c.is_whitespace())
                    .len();
            base = prefix[..prefix.len() - stars].trim().to_string();
            prefix = prefix[prefix.len() - stars..].trim().to_string();
            if base.is_empty() {
                return Err(fail("a __shared__ declaration without a type"));
            }
        }
        let ty = format!("{base}{prefix}");
        if k > 0 {
            out.push(' ');
        }
        let (slot, var) = if dims.is_empty() {
            (format!("{ty}* hg_shared_{name}"), format!("{ty}& {name}"))
        } else {
            (
                format!("{ty} (*hg_shared_{name}){dims}"),
                format!("{ty} (&{name}){dims}"),
            )
        };
        out.push_str(&format!(
            "static {slot} = nullptr; {var} = *hg_shared_static(hg_shared_{name}, {align});"
        ));
    }
    Ok((out, end + 1))
}

/// `text` padded with the newlines of `original` it lacks (as line continuations where the original had
/// them, inside a macro), so that the lines after it keep their numbers.
fn keep_lines(text: &str, original: &str) -> String {
    let newlines = original.matches('\n').count();
    let continued = original.matches("\\\n").count();
    let mut out = text.to_string();
    let have = out.matches('\n').count();
    if newlines > have {
        // Padding goes before the call's closing parenthesis, where whitespace is always allowed.
        let pad = "\n".repeat(newlines - have - continued.min(newlines - have))
            + &" \\\n".repeat(continued.min(newlines - have));
        match out.rfind(')') {
            Some(at) => out.insert_str(at, &pad),
            None => out.push_str(&pad),
        }
    }
    out
}

/// The module's registry: a static constructor that registers every kernel (the invoker made by template
/// deduction of its signature) and every module variable.
fn registry(module: &str, entries: &[String], globals: &[String]) -> String {
    let mut r = String::new();
    r.push_str("\n// ---- hgemu registry (emulator/transform.rs) ----\n");
    r.push_str("__attribute__((constructor)) static void hg_register_module() {\n");
    for e in entries {
        r.push_str(&format!(
            "    {{ static const hg_kernel_entry k = {{\"{e}\", &hg_invoke<&{e}>, hg_arity(&{e}), hg_param_sizes(&{e}), \"{module}\"}};\n      hgemu_register_kernel(&k); }}\n"
        ));
    }
    for g in globals.iter().filter(|g| !g.starts_with("__cudart_")) {
        r.push_str(&format!(
            "    {{ static const hg_global_entry v = {{\"{g}\", (void*)&{g}, sizeof({g}), \"{module}\"}};\n      hgemu_register_global(&v); }}\n"
        ));
    }
    r.push_str("}\n");
    r
}

#[cfg(test)]
mod tests {
    use super::host_source;

    fn t(src: &str) -> String {
        host_source("m", src, &[], &[]).unwrap()
    }

    #[test]
    fn mma_with_inout_outputs() {
        let src = "void f() {\n    asm volatile(\n        \"mma.sync {%0,%1}, \"\n        \"{%2};\\n\"\n        : \"+f\"(d[0]), \"+f\"(d[1])\n        : \"r\"(a[0]));\n    x = 1;\n}\n";
        let out = t(src);
        assert!(out.contains(
            "hgemu_asm(\"mma.sync {%0,%1}, \" \"{%2};\\n\", {hg_out('f', true, (d[0])), hg_out('f', true, (d[1])), hg_in('r', (a[0]))}"
        ), "{out}");
        assert_eq!(out.matches('\n').count(), src.matches('\n').count());
        assert!(out.lines().nth(6).unwrap().contains("x = 1;"));
    }

    #[test]
    fn outputs_inputs_empty_lists_and_immediates() {
        assert_eq!(
            t("asm volatile(\"cp.async.cg.shared.global [%0], [%1], 16, %2;\\n\" ::\"r\"(dst), \"l\"(gmem), \"r\"(valid ? 16 : 0));"),
            "hgemu_asm(\"cp.async.cg.shared.global [%0], [%1], 16, %2;\\n\", {hg_in('r', (dst)), hg_in('l', (gmem)), hg_in('r', (valid ? 16 : 0))});"
        );
        assert_eq!(
            t("asm volatile(\"cp.async.commit_group;\\n\" ::);"),
            "hgemu_asm(\"cp.async.commit_group;\\n\", {});"
        );
        assert_eq!(
            t("asm volatile(\"w %0;\" ::\"n\"(N));"),
            "hgemu_asm(\"w %0;\", {hg_in('n', (N))});"
        );
        assert_eq!(
            t("asm volatile(\"ld {%0,%1}, [%2];\" : \"=r\"(r[0]), \"=r\"(r[1]) : \"r\"(a) : \"memory\");"),
            "hgemu_asm(\"ld {%0,%1}, [%2];\", {hg_out('r', false, (r[0])), hg_out('r', false, (r[1])), hg_in('r', (a))});"
        );
        assert_eq!(t("__asm__ __volatile__(\"x;\");"), "hgemu_asm(\"x;\", {});");
    }

    #[test]
    fn scope_operators_and_commas_inside_operands() {
        assert_eq!(
            t("asm(\"a %0, %1;\" : \"=r\"(x) : \"r\"(::g(1, 2)));"),
            "hgemu_asm(\"a %0, %1;\", {hg_out('r', false, (x)), hg_in('r', (::g(1, 2)))});"
        );
    }

    #[test]
    fn asm_in_comments_strings_and_names_is_left_alone() {
        let src = "// asm volatile(\"x\");\n/* asm(\"y\") */ const char* s = \"asm(\\\"z\\\")\"; int plasma_asm = my_asm(1);\n";
        assert_eq!(t(src), src);
    }

    #[test]
    fn extern_shared_becomes_the_dynamic_buffer() {
        assert_eq!(
            t("    extern __shared__ float acc[];\n"),
            "    float* const acc = static_cast<float*>(hgemu_dynamic_shared());\n"
        );
        assert_eq!(
            t("extern __shared__ __align__(16) unsigned char buf [ ];"),
            "unsigned char* const buf = static_cast<unsigned char*>(hgemu_dynamic_shared());"
        );
        assert_eq!(
            t("extern \"C\" __global__ void k();"),
            "extern \"C\" __global__ void k();"
        );
        assert!(host_source("m", "extern __shared__ float acc[4];", &[], &[]).is_err());
    }

    #[test]
    fn static_shared_becomes_runtime_storage() {
        assert_eq!(
            t("    __shared__ double s[REDUCE_THREADS];\n"),
            "    static double (*hg_shared_s)[REDUCE_THREADS] = nullptr; double (&s)[REDUCE_THREADS] = *hg_shared_static(hg_shared_s, 0);\n"
        );
        assert_eq!(
            t("__shared__ __align__(16) uint4 smem[F(D)];"),
            "static uint4 (*hg_shared_smem)[F(D)] = nullptr; uint4 (&smem)[F(D)] = *hg_shared_static(hg_shared_smem, 16);"
        );
        assert_eq!(
            t("__shared__ float a[32][32], b[4];"),
            "static float (*hg_shared_a)[32][32] = nullptr; float (&a)[32][32] = *hg_shared_static(hg_shared_a, 0); \
             static float (*hg_shared_b)[4] = nullptr; float (&b)[4] = *hg_shared_static(hg_shared_b, 0);"
        );
        assert_eq!(
            t("__shared__ unsigned count, *low;"),
            "static unsigned* hg_shared_count = nullptr; unsigned& count = *hg_shared_static(hg_shared_count, 0); \
             static unsigned** hg_shared_low = nullptr; unsigned*& low = *hg_shared_static(hg_shared_low, 0);"
        );
        assert!(host_source("m", "__shared__ int x = 3;", &[], &[]).is_err());
        assert!(host_source("m", "{ __shared__ int x }", &[], &[]).is_err());
        assert_eq!(
            t("void f() {\n    __shared__ bool last;\n    g();\n}\n"),
            "void f() {\n    static bool* hg_shared_last = nullptr; bool& last = *hg_shared_static(hg_shared_last, 0);\n    g();\n}\n"
        );
        // In a macro body the replacement stays on the line.
        assert_eq!(
            t("#define M(D) \\\n    __shared__ bool last; \\\n    f();\n"),
            "#define M(D) \\\n    static bool* hg_shared_last = nullptr; bool& last = *hg_shared_static(hg_shared_last, 0); \\\n    f();\n"
        );
    }

    #[test]
    fn macro_bodies_keep_their_continuations() {
        let src = "#define A(x) asm volatile(\"a %0;\" \\\n    :: \"r\"(x))\nint y;\n";
        let out = t(src);
        assert_eq!(
            out,
            "#define A(x) hgemu_asm(\"a %0;\", {hg_in('r', (x))} \\\n)\nint y;\n"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = host_source("m", "\n\nasm(\"x %0;\" : \"=q\"(v));", &[], &[]).unwrap_err();
        assert!(e.starts_with("m: line 3:"), "{e}");
        assert!(host_source("m", "asm(x);", &[], &[]).is_err());
        assert!(host_source("m", "asm(\"x\" : \"r\"(v));", &[], &[]).is_err());
    }

    #[test]
    fn registry_for_a_module() {
        let globals = ["seed".into(), "__cudart_i2opi_d".into()];
        let out = host_source("reduce", "int k;\n", &["k1".into(), "k2".into()], &globals).unwrap();
        assert!(out.starts_with("int k;\n"));
        assert!(out
            .contains("{\"k1\", &hg_invoke<&k1>, hg_arity(&k1), hg_param_sizes(&k1), \"reduce\"}"));
        assert!(out.contains("{\"k2\", &hg_invoke<&k2>"));
        assert!(out.contains("{\"seed\", (void*)&seed, sizeof(seed), \"reduce\"}"));
        assert!(!out.contains("__cudart_i2opi_d"));
        assert!(!host_source("h", "int k;\n", &[], &[])
            .unwrap()
            .contains("registry"));
    }
}
